//! The CUFE (Código Único de Factura Electrónica): lowercase hex SHA-384 over the
//! invoice's fields concatenated without separators, as DIAN's technical annex defines
//! it. Amounts carry exactly two decimals, **truncated** (never rounded): an amount is
//! handled as the decimal text written on the invoice, never as a float.

use serde::Deserialize;
use sha2::{Digest, Sha384};

/// The fields of an invoice the CUFE covers, as written on it (all strings).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CufeFields {
    /// Invoice number with its prefix, e.g. `SETP990000001`.
    pub number: String,
    /// `YYYY-MM-DD`.
    pub date: String,
    /// `HH:MM:SS-05:00` (an offset-less `HH:MM:SS` is read as Colombia time, −05:00).
    pub time: String,
    pub subtotal: String,
    pub iva: String,
    pub inc: String,
    pub ica: String,
    pub total: String,
    /// Issuer NIT without its check digit.
    pub issuer_nit: String,
    pub buyer_id: String,
    /// The technical key of the numbering range (the software PIN for a CUDE).
    pub technical_key: String,
    /// `1` production, `2` test.
    pub environment: String,
}

/// A field that cannot go into a CUFE, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

fn bad(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// An amount with exactly two decimals, truncated: `"1500000"` → `1500000.00`,
/// `"12.999"` → `12.99`. Only plain non-negative decimal text is accepted (no sign,
/// thousands separators or exponent), so nothing is guessed.
pub fn amount(field: &'static str, text: &str) -> Result<String, FieldError> {
    let t = text.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) {
        return Err(bad(
            field,
            format!("{text:?} is not an amount (digits, optionally `.` and decimals)"),
        ));
    }
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let mut cents: String = frac.chars().take(2).collect();
    while cents.len() < 2 {
        cents.push('0');
    }
    Ok(format!("{int}.{cents}"))
}

/// An amount in minor units (cents) written as the CUFE wants it.
pub fn cents(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

fn date(text: &str) -> Result<String, FieldError> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text.trim(), fmt)
        .map(|_| text.trim().to_owned())
        .map_err(|_| bad("date", format!("{text:?} is not a date YYYY-MM-DD")))
}

fn clock_time(text: &str) -> Result<String, FieldError> {
    let t = text.trim();
    let (hms, offset) = match t.len() {
        8 => (t, "-05:00"),
        14 => t.split_at(8),
        _ => ("", ""),
    };
    let fmt = time::macros::format_description!("[hour]:[minute]:[second]");
    let offset_ok = offset.len() == 6
        && matches!(offset.as_bytes()[0], b'+' | b'-')
        && offset.as_bytes()[3] == b':'
        && offset[1..3]
            .bytes()
            .chain(offset[4..].bytes())
            .all(|b| b.is_ascii_digit());
    if time::Time::parse(hms, fmt).is_err() || !offset_ok {
        return Err(bad(
            "time",
            format!("{text:?} is not a time HH:MM:SS-05:00"),
        ));
    }
    Ok(format!("{hms}{offset}"))
}

fn token(field: &'static str, text: &str) -> Result<String, FieldError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(bad(field, "is empty"));
    }
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(field, format!("{text:?} contains spaces")));
    }
    Ok(t.to_owned())
}

impl CufeFields {
    /// The string that is hashed: every field normalised and concatenated, with the
    /// tax codes `01` (IVA), `04` (INC) and `03` (ICA) before their amounts.
    pub fn signed_string(&self) -> Result<String, FieldError> {
        let environment = match self.environment.trim() {
            e @ ("1" | "2") => e,
            other => {
                return Err(bad(
                    "environment",
                    format!("{other:?} is neither 1 (production) nor 2 (test)"),
                ));
            }
        };
        Ok([
            token("number", &self.number)?,
            date(&self.date)?,
            clock_time(&self.time)?,
            amount("subtotal", &self.subtotal)?,
            "01".into(),
            amount("iva", &self.iva)?,
            "04".into(),
            amount("inc", &self.inc)?,
            "03".into(),
            amount("ica", &self.ica)?,
            amount("total", &self.total)?,
            token("issuer_nit", &self.issuer_nit)?,
            token("buyer_id", &self.buyer_id)?,
            token("technical_key", &self.technical_key)?,
            environment.into(),
        ]
        .concat())
    }

    /// The CUFE: 96 lowercase hex characters.
    pub fn cufe(&self) -> Result<String, FieldError> {
        Ok(hex::encode(Sha384::digest(
            self.signed_string()?.as_bytes(),
        )))
    }

    /// Reads the fields from JSON, naming the field that is missing or not a string.
    pub fn from_json(text: &str) -> Result<Self, FieldError> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad("(input)", format!("not JSON: {e}")))?;
        let Some(obj) = v.as_object() else {
            return Err(bad("(input)", "expected a JSON object of invoice fields"));
        };
        const FIELDS: [&str; 12] = [
            "number",
            "date",
            "time",
            "subtotal",
            "iva",
            "inc",
            "ica",
            "total",
            "issuer_nit",
            "buyer_id",
            "technical_key",
            "environment",
        ];
        if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(bad(unknown, "is not a CUFE field"));
        }
        let get = |field: &'static str| -> Result<String, FieldError> {
            match obj.get(field) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(bad(
                    field,
                    format!("must be a string as written on the invoice, got {other}"),
                )),
                None => Err(bad(field, "is missing")),
            }
        };
        Ok(Self {
            number: get("number")?,
            date: get("date")?,
            time: get("time")?,
            subtotal: get("subtotal")?,
            iva: get("iva")?,
            inc: get("inc")?,
            ica: get("ica")?,
            total: get("total")?,
            issuer_nit: get("issuer_nit")?,
            buyer_id: get("buyer_id")?,
            technical_key: get("technical_key")?,
            environment: get("environment")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of DIAN's technical annex (docs/apis.md).
    pub fn annex() -> CufeFields {
        CufeFields {
            number: "323200000129".into(),
            date: "2019-01-16".into(),
            time: "10:53:10-05:00".into(),
            subtotal: "1500000.00".into(),
            iva: "285000.00".into(),
            inc: "0.00".into(),
            ica: "0.00".into(),
            total: "1785000.00".into(),
            issuer_nit: "700085371".into(),
            buyer_id: "800199436".into(),
            technical_key: "693ff6f2a553c3646a063436fd4dd9ded0311471".into(),
            environment: "1".into(),
        }
    }

    const ANNEX_CUFE: &str = "8bb918b19ba22a694f1da11c643b5e9de39adf60311cf179179e9b33381030bcd4c3c3f156c506ed5908f9276f5bd9b4";

    #[test]
    fn the_annex_example_gives_the_annex_cufe() {
        assert_eq!(annex().cufe().unwrap(), ANNEX_CUFE);
    }

    #[test]
    fn amounts_are_truncated_to_two_decimals_not_rounded() {
        assert_eq!(amount("x", "12.999").unwrap(), "12.99");
        assert_eq!(amount("x", "0.005").unwrap(), "0.00");
        assert_eq!(amount("x", "1500000").unwrap(), "1500000.00");
        assert_eq!(amount("x", "7.5").unwrap(), "7.50");
        assert_eq!(amount("x", "007.10").unwrap(), "7.10");
        // Extra decimals written on the invoice do not change the annex CUFE…
        let mut f = annex();
        f.subtotal = "1500000.009".into();
        f.iva = "285000.0049".into();
        assert_eq!(f.cufe().unwrap(), ANNEX_CUFE);
        // …whereas rounding would have: 285000.005 rounds up to 285000.01.
        f.iva = "285000.005".into();
        assert_eq!(f.cufe().unwrap(), ANNEX_CUFE);
        f.iva = "285000.01".into();
        assert_ne!(f.cufe().unwrap(), ANNEX_CUFE);
    }

    #[test]
    fn an_offset_less_time_is_colombia_time() {
        let mut f = annex();
        f.time = "10:53:10".into();
        assert_eq!(f.cufe().unwrap(), ANNEX_CUFE);
    }

    #[test]
    fn bad_fields_are_named() {
        for (field, value) in [
            ("subtotal", "1,500,000.00"),
            ("iva", "-1.00"),
            ("total", "1e6"),
            ("date", "16/01/2019"),
            ("time", "25:00:00-05:00"),
            ("time", "10:53:10 -05:00"),
            ("environment", "3"),
            ("number", ""),
            ("buyer_id", "800 199 436"),
        ] {
            let mut f = annex();
            match field {
                "subtotal" => f.subtotal = value.into(),
                "iva" => f.iva = value.into(),
                "total" => f.total = value.into(),
                "date" => f.date = value.into(),
                "time" => f.time = value.into(),
                "environment" => f.environment = value.into(),
                "number" => f.number = value.into(),
                _ => f.buyer_id = value.into(),
            }
            assert_eq!(f.cufe().unwrap_err().field, field, "{field} = {value:?}");
        }
    }

    #[test]
    fn json_input_names_missing_mistyped_and_unknown_fields() {
        let err = CufeFields::from_json(r#"{"number":"1"}"#).unwrap_err();
        assert_eq!(err.field, "date");
        let err = CufeFields::from_json(r#"{"number":1}"#).unwrap_err();
        assert_eq!(err.field, "number");
        let err = CufeFields::from_json(r#"{"numbr":"1"}"#).unwrap_err();
        assert_eq!(err.field, "numbr");
        assert_eq!(CufeFields::from_json("[").unwrap_err().field, "(input)");
    }

    #[test]
    fn cents_are_written_with_two_decimals() {
        assert_eq!(cents(178_500_000), "1785000.00");
        assert_eq!(cents(5), "0.05");
    }
}
