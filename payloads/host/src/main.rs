//! Test host payload at EL1.
#![no_std]
#![no_main]
