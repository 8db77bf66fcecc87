//! Unit tests of the summary's computation on a real (temp) run DB with known rows.

use super::*;
