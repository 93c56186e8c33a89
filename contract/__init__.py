"""The contract both programs speak, and nothing else: standard library only.

`protocol` (wire messages, limits, the `Reading` type, parsing and
validation), and the version both programs report. The agent and the
collector each import this; neither imports the other.
"""

__version__ = "0.1.0"
