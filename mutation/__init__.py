"""Mutation testing of the reference broker under the conformance kit (``make mutation``).

Jobs, one module each: :mod:`mutation.pymutants` (Python mutants, by mutmut),
:mod:`mutation.cmutants` (C mutants of log.c, plane.c and syncer.c, by our operator set), :mod:`mutation.coverage_map`
and :mod:`mutation.selection` (which kit cases each mutant's code runs in), :mod:`mutation.runner`
(each mutant as a real broker under the kit), :mod:`mutation.report` (JSON and Markdown) and
:mod:`mutation.equivalent` (survivors shown equivalent). docs/mutation.md is the manual.
"""
