"""The local long-context suite: generated offline from Debian documentation, scored here.

``eval.suite.generate`` writes it (LongBench jsonl layout), ``eval.longbench.pred`` predicts it,
``eval.suite.score`` scores it, ``eval.suite.run`` does all three against real servers.
"""
