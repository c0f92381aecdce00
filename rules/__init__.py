"""The built-in rules of stella-build (installed as `stella_build.rules`).

- rule modules (one per rule family): `sources` (osv_source, rustsec/alpine/vex/sbom sources,
  osv_normalize), `json_raw`, `json_policy`, `trivy_db` (+ `trivy_signed`), `mirror_full`,
  `mirror_delta`, and `signing` (the Exportfile `sign` table and the Sign action); their typed
  providers in `providers`; `builtin.register` publishes them (entry point `stella_build.rules`).
- `evidence/`: what the inputs mean: the normalized model, version orderings, policy, selectors,
  and the source parsers (`evidence/sources/`).
- `formats/`: what the outputs look like on disk: bundle manifest, signatures and keys, OCI, TUF,
  encryption, the mirror layout, and the Trivy DB formats (`formats/trivy/`).

Rules import the engine only through `stella_build.engine.rule_api`; `formats` and `evidence` import
no rule module; nothing here imports the product layer (contracts in pyproject.toml).
"""
