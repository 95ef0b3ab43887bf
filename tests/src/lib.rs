//! Helpers shared by the workspace integration tests (broker discovery, unique topics).
