//! One rate-limited, throttle-aware HTTP client per upstream.
//!
//! Every request passes a pause gate (set by 420, 429 + Retry-After, or the
//! ESI error budget running low) and a minimum-interval rate limiter, and is
//! retried on 5xx / timeouts with jittered backoff a bounded number of times.
//! GETs remember `ETag` and `Expires`: before Expires the remembered body is
//! reused without a request, after it the request is conditional.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, ETAG, EXPIRES, IF_NONE_MATCH, RETRY_AFTER};
use reqwest::{Method, StatusCode};

use crate::backoff::Backoff;
use crate::metrics::Metrics;
use crate::{Error, Result};

const CONDITIONAL_CACHE_MAX: usize = 10_000;

pub struct UpstreamConfig {
    pub name: &'static str,
    pub base_url: String,
    pub rps: f64,
    pub timeout: Duration,
    pub retries: u32,
    pub backoff: Backoff,
    pub throttle_default: Duration,
    pub user_agent: String,
    /// Pause when X-ESI-Error-Limit-Remain is at or below this (ESI only).
    pub error_limit_min: Option<i64>,
    pub default_headers: HeaderMap,
}

struct Remembered {
    etag: Option<HeaderValue>,
    expires: Option<SystemTime>,
    body: Bytes,
}

pub struct Upstream {
    cfg: UpstreamConfig,
    client: reqwest::Client,
    interval: Duration,
    next_slot: tokio::sync::Mutex<Instant>,
    paused_until: Mutex<Instant>,
    remembered: Mutex<HashMap<String, Remembered>>,
    metrics: Arc<Metrics>,
}

pub struct Request<'a> {
    pub endpoint: &'static str,
    pub method: Method,
    pub path: String,
    pub body: Option<(&'a str, Bytes)>,
}

impl<'a> Request<'a> {
    pub fn get(endpoint: &'static str, path: String) -> Self {
        Request {
            endpoint,
            method: Method::GET,
            path,
            body: None,
        }
    }
    pub fn post(endpoint: &'static str, path: String, content_type: &'a str, body: Bytes) -> Self {
        Request {
            endpoint,
            method: Method::POST,
            path,
            body: Some((content_type, body)),
        }
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Bytes,
    /// Upstream Expires, when given: fetching again earlier returns the same.
    pub expires: Option<SystemTime>,
}

impl Response {
    pub fn json<T: serde::de::DeserializeOwned>(
        &self,
        upstream: &'static str,
        endpoint: &'static str,
    ) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| Error::BadResponse {
            upstream,
            endpoint,
            detail: e.to_string(),
        })
    }
}

fn header_i64(h: &HeaderMap, name: &str) -> Option<i64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Retry-After is either delta-seconds or an HTTP date.
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs.min(86_400.0)));
        }
        return None;
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

impl Upstream {
    pub fn new(cfg: UpstreamConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .user_agent(cfg.user_agent.clone())
            .default_headers(cfg.default_headers.clone())
            .build()
            .map_err(|e| Error::Config(format!("http client for {}: {e}", cfg.name)))?;
        let interval = if cfg.rps > 0.0 {
            Duration::from_secs_f64(1.0 / cfg.rps)
        } else {
            Duration::ZERO
        };
        let now = Instant::now();
        Ok(Arc::new(Upstream {
            cfg,
            client,
            interval,
            next_slot: tokio::sync::Mutex::new(now),
            paused_until: Mutex::new(now),
            remembered: Mutex::new(HashMap::new()),
            metrics,
        }))
    }

    pub fn name(&self) -> &'static str {
        self.cfg.name
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/{}",
            self.cfg.base_url.trim_end_matches('/'),
            path.trim_start_matches('/')
        )
    }

    /// Stop sending to this upstream until `wait` from now (never shortens a pause).
    pub fn pause(&self, wait: Duration, reason: &'static str) {
        let until = Instant::now() + wait;
        if let Ok(mut p) = self.paused_until.lock() {
            if until > *p {
                *p = until;
            }
        }
        self.metrics
            .throttle_pauses
            .with_label_values(&[self.cfg.name, reason])
            .inc();
        tracing::warn!(
            upstream = self.cfg.name,
            reason,
            wait_ms = wait.as_millis() as u64,
            "pausing upstream"
        );
    }

    /// Remaining pause, if any.
    pub fn paused_for(&self) -> Option<Duration> {
        let until = *self.paused_until.lock().ok()?;
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    async fn wait_turn(&self) {
        while let Some(d) = self.paused_for() {
            tokio::time::sleep(d).await;
        }
        let slot = {
            let mut next = self.next_slot.lock().await;
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
        // A pause may have started while we waited for our slot.
        while let Some(d) = self.paused_for() {
            tokio::time::sleep(d).await;
        }
    }

    fn observe_error_limit(&self, h: &HeaderMap) {
        let Some(min) = self.cfg.error_limit_min else {
            return;
        };
        let Some(remain) = header_i64(h, "x-esi-error-limit-remain") else {
            return;
        };
        self.metrics.esi_error_limit_remain.set(remain);
        if remain <= min {
            let reset = header_i64(h, "x-esi-error-limit-reset")
                .unwrap_or(60)
                .clamp(0, 3600);
            // +1 s: the window resets at the end of the announced second.
            self.pause(Duration::from_secs(reset as u64 + 1), "error_limit");
        }
    }

    fn throttle_wait(&self, h: &HeaderMap) -> Duration {
        h.get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
            .or_else(|| {
                header_i64(h, "x-esi-error-limit-reset")
                    .map(|s| Duration::from_secs(s.clamp(0, 3600) as u64))
            })
            .unwrap_or(self.cfg.throttle_default)
    }

    /// Send with gate, rate limit and bounded retries. 2xx, 304 (as the
    /// remembered body) and 404 come back as Ok; callers decide what 404 means.
    pub async fn send(&self, req: Request<'_>) -> Result<Response> {
        let url = self.url(&req.path);
        let conditional = req.method == Method::GET;
        let (name, endpoint) = (self.cfg.name, req.endpoint);
        let mut last_err: Option<Error> = None;
        for attempt in 0..=self.cfg.retries {
            if attempt > 0 {
                tokio::time::sleep(self.cfg.backoff.delay_random(attempt)).await;
            }
            let mut etag = None;
            if conditional {
                if let Ok(map) = self.remembered.lock() {
                    if let Some(r) = map.get(&url) {
                        if r.expires.is_some_and(|e| e > SystemTime::now()) {
                            return Ok(Response {
                                status: 200,
                                body: r.body.clone(),
                                expires: r.expires,
                            });
                        }
                        etag = r.etag.clone();
                    }
                }
            }
            self.wait_turn().await;
            let mut rb = self.client.request(req.method.clone(), &url);
            if let Some(tag) = etag {
                rb = rb.header(IF_NONE_MATCH, tag);
            }
            if let Some((ct, body)) = &req.body {
                rb = rb
                    .header(reqwest::header::CONTENT_TYPE, *ct)
                    .body(body.clone());
            }
            let started = Instant::now();
            let result = async {
                let resp = rb.send().await?;
                let status = resp.status();
                let headers = resp.headers().clone();
                let body = resp.bytes().await?;
                Ok::<_, reqwest::Error>((status, headers, body))
            }
            .await;
            self.metrics
                .http_duration
                .with_label_values(&[name, endpoint])
                .observe(started.elapsed().as_secs_f64());
            let (status, headers, body) = match result {
                Ok(r) => r,
                Err(e) => {
                    let timed_out = e.is_timeout();
                    let label = if timed_out { "timeout" } else { "error" };
                    self.metrics
                        .http_requests
                        .with_label_values(&[name, endpoint, label])
                        .inc();
                    let detail = if timed_out {
                        format!("timed out after {:?}", self.cfg.timeout)
                    } else {
                        e.without_url().to_string()
                    };
                    tracing::warn!(upstream = name, endpoint, attempt, error = %detail, "request failed");
                    last_err = Some(Error::Transport {
                        upstream: name,
                        endpoint,
                        detail,
                    });
                    continue;
                }
            };
            self.metrics
                .http_requests
                .with_label_values(&[name, endpoint, status.as_str()])
                .inc();
            self.observe_error_limit(&headers);
            let expires = headers
                .get(EXPIRES)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok());

            if status == StatusCode::NOT_MODIFIED {
                if let Ok(mut map) = self.remembered.lock() {
                    if let Some(r) = map.get_mut(&url) {
                        r.expires = expires.or(r.expires);
                        return Ok(Response {
                            status: 200,
                            body: r.body.clone(),
                            expires,
                        });
                    }
                }
                last_err = Some(Error::BadResponse {
                    upstream: name,
                    endpoint,
                    detail: "304 without a remembered body".into(),
                });
                continue;
            }
            if status.is_success() {
                if conditional {
                    let etag = headers.get(ETAG).cloned();
                    if etag.is_some() || expires.is_some() {
                        if let Ok(mut map) = self.remembered.lock() {
                            if map.len() >= CONDITIONAL_CACHE_MAX {
                                map.clear();
                            }
                            map.insert(
                                url.clone(),
                                Remembered {
                                    etag,
                                    expires,
                                    body: body.clone(),
                                },
                            );
                        }
                    }
                }
                return Ok(Response {
                    status: status.as_u16(),
                    body,
                    expires,
                });
            }
            if status == StatusCode::NOT_FOUND {
                return Ok(Response {
                    status: 404,
                    body,
                    expires,
                });
            }
            if status.as_u16() == 420 || status == StatusCode::TOO_MANY_REQUESTS {
                let wait = self.throttle_wait(&headers);
                self.pause(wait, if status.as_u16() == 420 { "420" } else { "429" });
                last_err = Some(Error::Throttled {
                    upstream: name,
                    endpoint,
                    wait,
                });
                continue;
            }
            if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
                last_err = Some(Error::Status {
                    upstream: name,
                    endpoint,
                    status: status.as_u16(),
                });
                continue;
            }
            return Err(Error::Status {
                upstream: name,
                endpoint,
                status: status.as_u16(),
            });
        }
        Err(last_err.unwrap_or(Error::Transport {
            upstream: name,
            endpoint,
            detail: "no attempt made".into(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        let date = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(7)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
    }
}
