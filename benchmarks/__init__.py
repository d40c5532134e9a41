"""Speed benchmarks: fused_rnn's backends against torch.nn (cuDNN on GPU) and a per-step cell loop.

`python -m benchmarks.run --help` for the CLI; `python -m benchmarks.check RESULTS.json` for the
speed targets. What is measured and why is in BENCHMARKS.md.
"""
