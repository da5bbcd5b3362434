//! `setters!`: the builder-style `with_*` methods of the configuration structs.
//!
//! The structs are `#[non_exhaustive]`, so that a new setting is not a breaking change; outside
//! the crate they are built from their `Default` and these setters (or by assigning fields of a
//! mutable value), never with struct literals.

/// Generates `pub fn with_<field>(self, value) -> Self` for each listed field, documented with a
/// link to the field. Fields listed in `optional { }` are `Option`s: their setter takes the value
/// and stores `Some(value)`.
macro_rules! setters {
    (
        $ty:ty {
            $( $(#[$attr:meta])* $setter:ident => $field:ident: $value:ty, )*
        }
        $( optional {
            $( $(#[$opt_attr:meta])* $opt_setter:ident => $opt_field:ident: $opt_value:ty, )*
        } )?
    ) => {
        impl $ty {
            $(
                #[doc = concat!("Sets [`", stringify!($field), "`](Self::", stringify!($field), ").")]
                #[must_use]
                $(#[$attr])*
                pub fn $setter(mut self, value: $value) -> Self {
                    self.$field = value;
                    self
                }
            )*
            $($(
                #[doc = concat!("Sets [`", stringify!($opt_field), "`](Self::", stringify!($opt_field), ") to `Some(value)`.")]
                #[must_use]
                $(#[$opt_attr])*
                pub fn $opt_setter(mut self, value: $opt_value) -> Self {
                    self.$opt_field = Some(value);
                    self
                }
            )*)?
        }
    };
}
