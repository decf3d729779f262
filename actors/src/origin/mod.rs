//! Origin adapters: how cairn reads and writes upstream repositories.
