from tinystudent.cli import main

main()
