//! Integration tests of the workspace as a whole (this crate is the one every suite shares).

mod citations;
