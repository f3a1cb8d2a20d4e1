//! A service's Prometheus metrics as a test reads them: `GET /metrics` on its `METRICS_ADDR`, and the
//! samples of one metric out of the page.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The page `GET /metrics` answers at `address`, headers included.
pub async fn scrape(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut page = String::new();
    stream.read_to_string(&mut page).await?;
    Ok(page)
}

/// One sample of a metric: its labels as written (`partition="0"`, empty without labels) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: String,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.split(',').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key.trim() == name).then(|| value.trim().trim_matches('"'))
        })
    }
}

/// Every sample of metric `name` on `page` (for a histogram, name its `_count` or `_sum`).
pub fn samples(page: &str, name: &str) -> Vec<Sample> {
    page.lines()
        .filter_map(|line| line.strip_prefix(name))
        .filter_map(|rest| {
            let (labels, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            Some(Sample {
                labels: labels.to_string(),
                value: value.trim().parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# TYPE orders_lag gauge\norders_lag{partition=\"0\"} 3\norders_lag{partition=\"1\"} 0\n\
                        orders_lag_total 7\norders_published_total 12\n";

    #[test]
    fn samples_are_those_of_the_named_metric_only_with_their_labels() {
        let lag = samples(PAGE, "orders_lag");
        assert_eq!(lag.len(), 2, "{lag:?}");
        assert_eq!(lag[0].label("partition"), Some("0"));
        assert_eq!(lag[0].value, 3.0);
        assert_eq!(samples(PAGE, "orders_published_total")[0].value, 12.0);
        assert!(samples(PAGE, "orders_missing").is_empty());
    }
}
