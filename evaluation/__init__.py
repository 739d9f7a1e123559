"""3H evaluation: suites, runners, judges, sandboxed code execution, scoring and the gate.

`run_suite` is imported lazily so `import evaluation.scoring` stays light.
"""


def run_suite(*args, **kwargs):
    from evaluation.runner import run_suite as _run

    return _run(*args, **kwargs)


def __getattr__(name):
    if name in ("EvalResult", "EvalError"):
        from evaluation import runner

        return getattr(runner, name)
    raise AttributeError(name)
