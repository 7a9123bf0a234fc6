//! Models live in `tests/`; they only build with `--cfg loom`.
