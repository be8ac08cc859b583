"""tinystudent: how small can a model be and still beat a larger model on your task, once taught?"""

__version__ = "0.1.0"
