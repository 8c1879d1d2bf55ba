"""Every config group's settings whose code needs torch or Lightning: the dataclasses, their
ranges, and for each option the "module:name" of its code, imported only when a run builds it.

So composing and checking a config imports neither (a mistake is one line at once); the code
imports its settings from here. ``data=`` and ``tokenizer=`` need neither library and keep
their settings beside their code, in ``lmexp/data/``.
"""
