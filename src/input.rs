//! Exact validation of the values callers pass to the API.
//!
//! Amounts are money-like: they must be finite, positive (or zero where the
//! API allows it) and fit `numeric(20,6)`. The check goes through the exact
//! decimal text of the value, never through floats; `rust_decimal` holds 28
//! digits, so anything that does not parse exactly is out of range.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use rust_decimal::Decimal;

/// Largest integer part allowed by `numeric(20,6)`.
const MAX_INTEGER_DIGITS: u32 = 14;
/// Fraction digits allowed by `numeric(20,6)`.
const MAX_SCALE: u32 = 6;

#[derive(Debug, PartialEq, Eq)]
pub enum AmountError {
    NotFinite,
    NotPositive,
    Negative,
    OutOfRange,
    TooPrecise,
}

/// Checks the decimal text of an amount. `allow_zero` admits exactly 0.
pub fn check_amount(text: &str, allow_zero: bool) -> Result<Decimal, AmountError> {
    if text.eq_ignore_ascii_case("nan") || text.to_ascii_lowercase().contains("inf") {
        return Err(AmountError::NotFinite);
    }
    let value = Decimal::from_str_exact(text).map_err(|_| AmountError::OutOfRange)?;
    if value.is_sign_negative() && !value.is_zero() {
        return Err(if allow_zero {
            AmountError::Negative
        } else {
            AmountError::NotPositive
        });
    }
    if value.is_zero() && !allow_zero {
        return Err(AmountError::NotPositive);
    }
    let limit = Decimal::from(10u64.pow(MAX_INTEGER_DIGITS));
    if value >= limit {
        return Err(AmountError::OutOfRange);
    }
    if value.normalize().scale() > MAX_SCALE {
        return Err(AmountError::TooPrecise);
    }
    Ok(value)
}

fn bad_input(code: PgSqlErrorCode, message: String, detail: String, hint: &str) -> ! {
    ErrorReport::new(code, message, "credits")
        .set_detail(detail)
        .set_hint(hint)
        .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Validates an amount argument named `name`: raises 22004 for NULL, 22023
/// for NaN, infinities, zero/negative values and more than six decimals, and
/// 22003 beyond `numeric(20,6)`. Returns the value unchanged.
#[pg_extern(immutable, parallel_safe, schema = "credits")]
pub fn _amount(
    value: Option<AnyNumeric>,
    name: Option<&str>,
    allow_zero: Option<bool>,
) -> AnyNumeric {
    let name = name.unwrap_or("amount");
    let Some(value) = value else {
        bad_input(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{name} must not be NULL"),
            format!("{name} is required."),
            "Pass a positive amount such as 10 or 0.5.",
        )
    };
    let allow_zero = allow_zero.unwrap_or(false);
    let text = value.to_string();
    match check_amount(&text, allow_zero) {
        Ok(_) => value,
        Err(AmountError::NotFinite) => bad_input(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{name} must be a finite number"),
            format!("{name} is {text}."),
            "Amounts are numeric(20,6): NaN and infinities are not amounts.",
        ),
        Err(AmountError::NotPositive) => bad_input(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{name} must be greater than zero"),
            format!("{name} is {text}."),
            "Pass a positive amount.",
        ),
        Err(AmountError::Negative) => bad_input(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{name} must not be negative"),
            format!("{name} is {text}."),
            "Pass zero or a positive amount.",
        ),
        Err(AmountError::OutOfRange) => bad_input(
            PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            format!("{name} is out of range"),
            format!("{name} is {text}; amounts must fit numeric(20,6)."),
            "Amounts must be below 100000000000000 (10^14).",
        ),
        Err(AmountError::TooPrecise) => bad_input(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{name} has more than {MAX_SCALE} decimal places"),
            format!("{name} is {text}."),
            "Round the amount to at most 6 decimal places; credits never round silently.",
        ),
    }
}

/// Validates a required identifier or label argument: 22004 for NULL,
/// 22023 when empty (or only spaces) or longer than `max_len` characters.
#[pg_extern(immutable, parallel_safe, schema = "credits")]
pub fn _ident(value: Option<&str>, name: Option<&str>, max_len: Option<i32>) -> String {
    let name = name.unwrap_or("value");
    let max_len = usize::try_from(max_len.unwrap_or(255)).unwrap_or(255);
    let Some(value) = value else {
        bad_input(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{name} must not be NULL"),
            format!("{name} is required."),
            "Pass a non-empty text value.",
        )
    };
    if value.trim_matches(' ').is_empty() {
        bad_input(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{name} must not be empty"),
            format!("{name} is '{value}'."),
            "Pass a non-empty text value.",
        )
    }
    let chars = value.chars().count();
    if chars > max_len {
        bad_input(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{name} is too long"),
            format!("{name} has {chars} characters; at most {max_len} are allowed."),
            "Use a shorter value.",
        )
    }
    value.to_string()
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn accepts_amounts_that_fit_numeric_20_6() {
        assert_eq!(check_amount("10", false), Ok(Decimal::from(10)));
        assert!(check_amount("0.000001", false).is_ok());
        assert!(check_amount("99999999999999.999999", false).is_ok());
        assert!(check_amount("1.500000000", false).is_ok());
        assert!(check_amount("0", true).is_ok());
    }

    #[test]
    fn refuses_what_is_not_an_amount() {
        assert_eq!(check_amount("NaN", false), Err(AmountError::NotFinite));
        assert_eq!(check_amount("Infinity", false), Err(AmountError::NotFinite));
        assert_eq!(check_amount("-Infinity", true), Err(AmountError::NotFinite));
        assert_eq!(check_amount("0", false), Err(AmountError::NotPositive));
        assert_eq!(check_amount("-1", false), Err(AmountError::NotPositive));
        assert_eq!(check_amount("-1", true), Err(AmountError::Negative));
        assert_eq!(
            check_amount("100000000000000", false),
            Err(AmountError::OutOfRange)
        );
        assert_eq!(
            check_amount("1234567890123456789012345678901234567890", false),
            Err(AmountError::OutOfRange)
        );
        assert_eq!(
            check_amount("0.0000001", false),
            Err(AmountError::TooPrecise)
        );
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn amount_passes_valid_values_through_unchanged() {
        let back =
            Spi::get_one::<String>("SELECT credits._amount(12.500000, 'amount', false)::text")
                .unwrap();
        assert_eq!(back.as_deref(), Some("12.500000"));
    }

    #[pg_test(error = "amount must be a finite number")]
    fn amount_refuses_nan() {
        Spi::run("SELECT credits._amount('NaN', 'amount', false)").unwrap();
    }

    #[pg_test(error = "amount is out of range")]
    fn amount_refuses_values_beyond_numeric_20_6() {
        Spi::run("SELECT credits._amount(1e30, 'amount', false)").unwrap();
    }

    #[pg_test(error = "product is too long")]
    fn ident_refuses_long_labels() {
        Spi::run("SELECT credits._ident(repeat('x', 300), 'product', 255)").unwrap();
    }
}
