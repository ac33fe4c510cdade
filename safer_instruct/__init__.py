"""safer-instruct: build safety preference data with the Safer-Instruct method, train on it, measure it.

The library is imported by the thin entry points under `train/` and `eval/` and by the `safer-instruct`
command line. Importing this package is cheap: heavy libraries (torch, transformers, TRL) are imported
by the modules that need them, never here.
"""

__version__ = "0.1.0"
