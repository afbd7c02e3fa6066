//! Subscription consent (docs/interface.md §12): the ledger's fold in any order of pushes and
//! sends, the receiver's consent pushes, and whole trips through the simulator's pop-up.

mod flow;
mod ledger;

use super::common::*;
use super::helpers::*;
