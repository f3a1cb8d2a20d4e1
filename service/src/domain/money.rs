//! `Money`: an exact amount in one currency, never floating point.
//!
//! On the wire it is `google.type.Money` (`currency_code`, whole `units`, `nanos` of 10^-9); in
//! PostgreSQL a `numeric(28, 9)`; here a `rust_decimal::Decimal`. Every amount the service produces
//! fits back into `google.type.Money`, which is checked where sums are made.

use std::fmt;

use rust_decimal::Decimal;

const NANOS_PER_UNIT: i128 = 1_000_000_000;

/// An ISO 4217 code: three upper-case ASCII letters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CurrencyCode(String);

impl CurrencyCode {
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Self(code.to_string()))
        } else {
            Err(MoneyError::Currency(code.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    currency: CurrencyCode,
    amount: Decimal,
    /// `google.type.Money`'s `units` and `nanos`, computed once: a `Money` that exists always fits.
    units: i64,
    nanos: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("currency_code must be three upper-case letters (ISO 4217), got {0:?}")]
    Currency(String),
    #[error("nanos must be between -999999999 and 999999999, got {0}")]
    NanosRange(i32),
    #[error("units ({units}) and nanos ({nanos}) must have the same sign")]
    MixedSigns { units: i64, nanos: i32 },
    #[error("must not be negative")]
    Negative,
    #[error("is too large")]
    Overflow,
}

impl Money {
    /// From the parts of `google.type.Money`, checked as its documentation requires.
    pub fn parse(currency_code: &str, units: i64, nanos: i32) -> Result<Self, MoneyError> {
        let currency = CurrencyCode::parse(currency_code)?;
        if !(-999_999_999..=999_999_999).contains(&nanos) {
            return Err(MoneyError::NanosRange(nanos));
        }
        if (units > 0 && nanos < 0) || (units < 0 && nanos > 0) {
            return Err(MoneyError::MixedSigns { units, nanos });
        }
        let total_nanos = i128::from(units) * NANOS_PER_UNIT + i128::from(nanos);
        let amount = Decimal::try_from_i128_with_scale(total_nanos, 9).map_err(|_| MoneyError::Overflow)?;
        Self::from_decimal(currency, amount)
    }

    /// From a stored amount; fails if it does not fit `google.type.Money` or has more than 9 decimals.
    pub fn from_decimal(currency: CurrencyCode, amount: Decimal) -> Result<Self, MoneyError> {
        let amount = amount.normalize();
        let mut scaled = amount;
        scaled.rescale(9);
        if scaled.scale() != 9 || scaled != amount {
            return Err(MoneyError::Overflow);
        }
        let total_nanos = scaled.mantissa();
        let units = i64::try_from(total_nanos / NANOS_PER_UNIT).map_err(|_| MoneyError::Overflow)?;
        // |remainder| < 10^9, so it fits an i32.
        let nanos = (total_nanos % NANOS_PER_UNIT) as i32;
        Ok(Self {
            currency,
            amount,
            units,
            nanos,
        })
    }

    pub fn zero(currency: CurrencyCode) -> Self {
        Self {
            currency,
            amount: Decimal::ZERO,
            units: 0,
            nanos: 0,
        }
    }

    pub fn currency(&self) -> &CurrencyCode {
        &self.currency
    }

    pub fn amount(&self) -> Decimal {
        self.amount
    }

    pub fn is_negative(&self) -> bool {
        self.amount.is_sign_negative() && !self.amount.is_zero()
    }

    /// `self * quantity`, if it still fits `google.type.Money`.
    pub fn times(&self, quantity: i32) -> Result<Self, MoneyError> {
        let amount = self
            .amount
            .checked_mul(Decimal::from(quantity))
            .ok_or(MoneyError::Overflow)?;
        Self::from_decimal(self.currency.clone(), amount)
    }

    /// `self + other` in the same currency, if it still fits.
    pub fn plus(&self, other: &Money) -> Result<Self, MoneyError> {
        debug_assert_eq!(self.currency, other.currency);
        let amount = self
            .amount
            .checked_add(other.amount)
            .ok_or(MoneyError::Overflow)?;
        Self::from_decimal(self.currency.clone(), amount)
    }

    /// `(currency_code, units, nanos)` of `google.type.Money`.
    pub fn parts(&self) -> (&str, i64, i32) {
        (self.currency.as_str(), self.units, self.nanos)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(units: i64, nanos: i32) -> Money {
        Money::parse("USD", units, nanos).unwrap()
    }

    #[test]
    fn parts_round_trip_exactly() {
        for (units, nanos) in [
            (0, 0),
            (1, 750_000_000),
            (-1, -750_000_000),
            (0, -1),
            (i64::MAX, 999_999_999),
        ] {
            assert_eq!(usd(units, nanos).parts(), ("USD", units, nanos));
        }
    }

    #[test]
    fn bad_parts_are_refused_with_a_reason() {
        assert_eq!(Money::parse("usd", 1, 0), Err(MoneyError::Currency("usd".into())));
        assert_eq!(Money::parse("US", 1, 0), Err(MoneyError::Currency("US".into())));
        assert_eq!(
            Money::parse("USD", 1, 1_000_000_000),
            Err(MoneyError::NanosRange(1_000_000_000))
        );
        assert_eq!(
            Money::parse("USD", 1, -5),
            Err(MoneyError::MixedSigns { units: 1, nanos: -5 })
        );
    }

    #[test]
    fn arithmetic_is_exact_and_overflow_is_an_error() {
        let price = usd(0, 100_000_000); // 0.10
        let total = price.times(3).unwrap().plus(&usd(0, 200_000_000)).unwrap();
        assert_eq!(total.parts(), ("USD", 0, 500_000_000));
        assert_eq!(usd(i64::MAX, 0).times(2), Err(MoneyError::Overflow));
    }
}
