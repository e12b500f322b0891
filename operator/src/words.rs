//! Enums that travel as plain strings: status words (condition types, reasons, health, target
//! states) are typed in the code and serialised to the same strings as before, so the CRD
//! schema (`type: string`) and the printer columns do not change.
//!
//! A word this version does not know (written by a newer operator, or by hand) is kept as
//! read — `Other(text)` — or mapped to a fallback variant, never refused: refusing it would
//! make the whole object unreadable.

/// Declares a string enum: `as_str`, `Display`, `From<&str>`, serde as a string, and the
/// JSON schema of a string.
///
/// `else Other(String)` keeps unknown words; `else Variant` maps them to that variant, which
/// is also the default.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident ),+ $(,)?
        }
        else $other:ident(String)
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A word this version does not know, kept as read.
            $other(String),
        }

        impl $name {
            /// Every known word, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => stringify!($variant), )+
                    $name::$other(s) => s.as_str(),
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $( stringify!($variant) => $name::$variant, )+
                    other => $name::$other(other.to_owned()),
                }
            }
        }

        /// The empty word, as an unset string field was.
        impl Default for $name {
            fn default() -> Self {
                $name::$other(String::new())
            }
        }

        $crate::words::string_enum!(@common $name);
    };
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident ),+ $(,)?
        }
        else $fallback:ident
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every word, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(&self) -> &'static str {
                match self {
                    $( $name::$variant => stringify!($variant), )+
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $( stringify!($variant) => $name::$variant, )+
                    _ => $name::$fallback,
                }
            }
        }

        /// The fallback word is also the default.
        impl Default for $name {
            fn default() -> Self {
                $name::$fallback
            }
        }

        $crate::words::string_enum!(@common $name);
    };
    (@common $name:ident) => {
        /// Compares with the word as written, e.g. in a test reading an object's status.
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Ok($name::from(&*s))
            }
        }

        impl schemars::JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }

            fn schema_name() -> std::borrow::Cow<'static, str> {
                <String as schemars::JsonSchema>::schema_name()
            }

            fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
                <String as schemars::JsonSchema>::json_schema(g)
            }
        }
    };
}

pub(crate) use string_enum;

#[cfg(test)]
mod tests {
    string_enum! {
        enum Open { Alpha, Beta } else Other(String)
    }
    string_enum! {
        enum Closed { Yes, No, Unsure } else Unsure
    }

    #[test]
    fn words_round_trip_as_plain_strings() {
        for w in Open::ALL {
            let json = serde_json::to_string(w).unwrap();
            assert_eq!(json, format!("\"{}\"", w.as_str()));
            assert_eq!(&serde_json::from_str::<Open>(&json).unwrap(), w);
        }
        let closed: Vec<String> = Closed::ALL.iter().map(|w| w.to_string()).collect();
        assert_eq!(closed, ["Yes", "No", "Unsure"]);
        for w in Closed::ALL {
            let json = serde_json::to_string(w).unwrap();
            assert_eq!(json, format!("\"{}\"", w.as_str()));
            assert_eq!(&serde_json::from_str::<Closed>(&json).unwrap(), w);
        }
    }

    #[test]
    fn an_unknown_word_is_kept_or_falls_back_never_refused() {
        let kept: Open = serde_json::from_str("\"Gamma\"").unwrap();
        assert_eq!(kept, Open::Other("Gamma".into()));
        assert_eq!(serde_json::to_string(&kept).unwrap(), "\"Gamma\"");
        let fallback: Closed = serde_json::from_str("\"maybe\"").unwrap();
        assert_eq!(fallback, Closed::Unsure);
    }

    #[test]
    fn the_schema_is_a_plain_string() {
        let schema = schemars::schema_for!(Open);
        assert_eq!(schema.get("type").and_then(|t| t.as_str()), Some("string"));
        assert!(schema.get("enum").is_none());
    }
}
