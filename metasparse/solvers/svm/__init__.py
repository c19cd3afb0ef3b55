"""The group-sparse Crammer–Singer SVM head's solver, one job per module; imports run one way:

``solve`` → ``backward`` → ``face``; ``solve`` → ``fista`` → ``steps``, ``polish``, ``metric``;
all of them → ``problem`` → :mod:`metasparse.solvers.products`, :mod:`metasparse.solvers.linalg`
(and :mod:`metasparse.solvers.tuning`, :mod:`metasparse.solvers.root`). See
:mod:`metasparse.solvers.group_sparse_svm` for the public names.
"""
