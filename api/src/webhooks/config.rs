//! Webhook settings (`CRM_WEBHOOK_*`).

use std::time::Duration;

use clap::Args;

/// How webhooks are delivered.
#[derive(Debug, Clone, Args)]
pub struct WebhookConfig {
    /// Allow webhook URLs on loopback, private, link-local, CGNAT,
    /// unique-local and metadata addresses, and plain `http://` (for tests
    /// and a receiver on the same network). Off: such URLs are refused at
    /// creation and at every delivery.
    #[arg(long = "webhook-allow-private", env = "CRM_WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub allow_private: bool,
    /// Pauses between a failed attempt and the next one, comma-separated
    /// (`500ms`, `5s`, `5m`, `2h`, `1d`); a delivery fails for good after the
    /// last. Each pause varies by up to a tenth (jitter).
    #[arg(
        long = "webhook-retry-schedule",
        env = "CRM_WEBHOOK_RETRY_SCHEDULE",
        default_value = "5s,5m,30m,2h,5h,10h,14h,20h,24h",
        global = true
    )]
    pub retry_schedule: RetrySchedule,
    /// How long one attempt may take.
    #[arg(
        long = "webhook-timeout",
        env = "CRM_WEBHOOK_TIMEOUT",
        default_value = "15s",
        global = true
    )]
    pub timeout: DurationArg,
    /// An endpoint whose every attempt failed for this long is disabled
    /// (and a `webhook.disabled` event is written).
    #[arg(
        long = "webhook-disable-after",
        env = "CRM_WEBHOOK_DISABLE_AFTER",
        default_value = "5d",
        global = true
    )]
    pub disable_after: DurationArg,
    /// Most attempts in flight to one endpoint from one process.
    #[arg(
        long = "webhook-concurrency",
        env = "CRM_WEBHOOK_CONCURRENCY",
        default_value_t = 16,
        global = true
    )]
    pub per_endpoint: usize,
    /// Run the webhook dispatcher and delivery worker in this process
    /// (several processes share the work).
    #[arg(long = "webhook-worker", env = "CRM_WEBHOOK_WORKER", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub worker: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            allow_private: false,
            retry_schedule: RetrySchedule::default(),
            timeout: DurationArg(Duration::from_secs(15)),
            disable_after: DurationArg(Duration::from_secs(5 * 24 * 3600)),
            per_endpoint: 16,
            worker: true,
        }
    }
}

impl WebhookConfig {
    /// How long a worker holds a claimed delivery: an attempt's timeout and
    /// a margin. A worker that dies lets its claims go when it ends.
    pub fn lease(&self) -> Duration {
        self.timeout.0.saturating_mul(2).max(Duration::from_secs(1))
    }
}

/// A duration such as `500ms`, `15s`, `5m`, `2h`, `5d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationArg(pub Duration);

impl std::str::FromStr for DurationArg {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        parse_duration(raw).map(DurationArg)
    }
}

/// The pauses between attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(pub Vec<Duration>);

impl Default for RetrySchedule {
    fn default() -> Self {
        const H: u64 = 3600;
        RetrySchedule(
            [5, 300, 1800, 2 * H, 5 * H, 10 * H, 14 * H, 20 * H, 24 * H]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
        )
    }
}

impl std::str::FromStr for RetrySchedule {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let pauses = raw
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(parse_duration)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RetrySchedule(pauses))
    }
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration such as 500ms, 5s, 5m, 2h or 1d"))?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" | "" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "{raw:?} is not a duration such as 500ms, 5s, 5m, 2h or 1d"
            ))
        }
    };
    Ok(Duration::from_millis(n.saturating_mul(unit_ms)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn schedules_and_durations_parse() {
        let s: RetrySchedule = "100ms, 2s,5m,1h,1d".parse().unwrap();
        assert_eq!(
            s.0,
            vec![
                Duration::from_millis(100),
                Duration::from_secs(2),
                Duration::from_secs(300),
                Duration::from_secs(3600),
                Duration::from_secs(86_400),
            ]
        );
        assert_eq!(
            "5s,5m,30m,2h,5h,10h,14h,20h,24h"
                .parse::<RetrySchedule>()
                .unwrap(),
            RetrySchedule::default()
        );
        assert!("5 parsecs".parse::<DurationArg>().is_err());
        assert!("".parse::<DurationArg>().is_err());
    }
}
