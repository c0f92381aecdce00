"""Differential test of advisory semantics over the shared corpora (docs/differential.md).

Three answers are compared on generated probe versions of every affected package:
(a) json:policy built by stella-build, (b) osv-scanner (the OSV reference implementation) or, where
it cannot express a case, the OSV-schema evaluator in ``spec.py``, and (c) real Trivy scanning
with the trivy:db stella-build writes. Nothing in this package imports the project's evidence
model: records are read and converted here, independently, so that a fault in the project's
parsers shows up as a disagreement instead of being shared by both sides.
"""
