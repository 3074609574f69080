//! Sources: where records come from. `tail` follows files by path and identity.

pub mod tail;
