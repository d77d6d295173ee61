//! Where messages enter the relay. Both paths validate with the same
//! [`Validator`](crate::publication::Validator) and publish through the same broker.
//!
//! - [`sqs`]: long-polling consumers of the incoming queue.
//! - [`http`]: `POST /publish`.

pub mod http;
pub mod sqs;
