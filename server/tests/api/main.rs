//! The server's integration tests, one module per area, in one test binary: linked once
//! instead of once per file. `flood.rs` stays a binary of its own (it measures its process's
//! memory).

mod abuse;
mod accounts;
mod admin;
mod browser;
mod chat;
mod cluster;
mod django;
mod documents;
mod faults;
mod feedback;
mod gaps;
mod jobs;
mod layout;
mod live_answers;
mod providers;
mod rag;
mod scale;
mod scaleout;
mod web;
