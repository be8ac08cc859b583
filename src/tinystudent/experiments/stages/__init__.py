"""The stages of a study, in the order they run: teachers, students, training, collaboration and
the loss-guided search.

Each stage module plans its units (`plan_*`, pure: it adds `UnitSpec`s to a `Plan`) and holds the
work each of its units does (functions of a `StageContext` and the unit; the unit's log is
`context.log(unit)`).
"""
