//! Strata's integration tests: one binary (ripgrep style), talking to real peers.

mod common;

mod bad_input;
mod cli;
mod cluster;
mod cold_faults;
mod crash;
mod dicomweb;
mod engines;
mod fhir;
mod find;
mod full_disk;
mod governance;
mod integrity;
mod migrate;
mod patients;
mod retrieve;
mod security;
mod store;
mod tiering;
mod tokens;
mod usecases;
mod viewer;
