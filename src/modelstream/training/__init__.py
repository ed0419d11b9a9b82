"""Training and validation, the tutorial's second half, as one-off commands next to the daemon.

folds.py       the train/valid fold of a document: a pure function of its `_id` (nothing written to it)
measures.py    cosine, dot, l2 similarity matrices
metrics.py     P@k, Jaccard, user metrics by import path
losses.py      the ranking loss, BCE with pos_weight, user losses by import path
inputs.py      what a model reads from a document record (raw fields, or stored upstream outputs)
validation.py  frozen validation sets (`_modelstream.validation.<NAME>`) and `validate INDEX`
jobs.py        `modelstream train NAME`: the loop, early stopping, best weights, the job record
plots.py       PNG curves of a job record (matplotlib)
"""
