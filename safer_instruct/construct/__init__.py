"""Safer-Instruct data construction: induce, filter_instructions, respond, filter_responses, assemble.

Phases (`phases.py`) move rows from one phase's output to the next; tasks (`tasks.py`) are a prompt
template plus the parsing of its answer; the LLM roles come from `safer_instruct.llm`; `store.py`
makes every phase resumable; `pipeline.py` runs the selected phases and writes the outputs.
"""
