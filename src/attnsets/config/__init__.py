"""Config files -> typed specs: the build-and-check sequence shared by a study file
(attnsets.study.config) and a single-run file (`single.run_spec_from_config`), and the preflight
checks that build every model for the data it meets before anything is trained."""
