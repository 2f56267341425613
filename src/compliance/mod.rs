//! The invoice compliance pipeline's domain: CUFE, the compliance state machine,
//! contingency and the same-day rule (DIAN's rules in docs/apis.md).

pub mod contingency;
pub mod cufe;
pub mod invoice;
pub mod machine;
