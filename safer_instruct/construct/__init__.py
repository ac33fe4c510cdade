"""Safer-Instruct data construction: induce, filter_instructions, respond, filter_responses, assemble.

Steps (`steps.py`) move rows from one stage's output to the next; tasks (`tasks.py`) are a prompt
template plus the parsing of its answer; the LLM roles come from `safer_instruct.llm`; `store.py`
makes every stage resumable; `pipeline.py` runs the selected stages and writes the outputs.
"""
