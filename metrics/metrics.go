// Package metrics holds ingress-acme's Prometheus collectors, registered on a
// registry the caller passes in, and the handler that serves them.
package metrics

import (
	"net/http"
	"runtime"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const namespace = "ingress_acme"

// Metrics are the controller's collectors. Its methods are safe for concurrent use.
type Metrics struct {
	certs             *certificates
	issuances         *prometheus.CounterVec
	orderDuration     *prometheus.HistogramVec
	acmeRequests      *prometheus.CounterVec
	acmeDuration      *prometheus.HistogramVec
	challengeRequests *prometheus.CounterVec
	selfChecks        *prometheus.CounterVec
	problems          *prometheus.CounterVec
	hostsWithoutTLS   *prometheus.GaugeVec
	workqueue         *workqueueProvider
}

// New creates the collectors and registers them, with a build_info gauge for
// version, on reg. It panics if reg already holds collectors of the same names,
// which is a programming error.
func New(reg prometheus.Registerer, version string) *Metrics {
	m := &Metrics{certs: newCertificates()}
	m.addOrderCollectors()
	m.addRequestCollectors()
	m.addProblemCollectors()
	reg.MustRegister(m.certs, m.issuances, m.orderDuration,
		m.acmeRequests, m.acmeDuration, m.challengeRequests, m.selfChecks, m.problems, m.hostsWithoutTLS,
		buildInfo(version))
	m.workqueue = newWorkqueueProvider(reg)
	return m
}

// addOrderCollectors creates the order counter and duration histogram, with
// every kind and outcome started at 0.
func (m *Metrics) addOrderCollectors() {
	m.issuances = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "issuances_total",
		Help: "Certificate orders completed, by kind (issue: no usable certificate before; renew) and outcome (success, failure).",
	}, []string{"kind", "outcome"})
	m.orderDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "order_duration_seconds",
		Help:    "Time from deciding to order a certificate to the Secret written (or the failure), by kind and outcome.",
		Buckets: []float64{0.25, 0.5, 1, 1.5, 2.5, 5, 10, 30, 60, 120, 300},
	}, []string{"kind", "outcome"})
	// Start the outcome counters at 0, so that increase() sees the first one.
	for _, kind := range []string{"issue", "renew"} {
		for _, outcome := range []string{"success", "failure"} {
			m.issuances.WithLabelValues(kind, outcome)
			m.orderDuration.WithLabelValues(kind, outcome)
		}
	}
}

// addRequestCollectors creates the collectors of HTTP traffic: requests to the
// ACME CA, to the challenge server, and self-checks through the ingress.
func (m *Metrics) addRequestCollectors() {
	m.acmeRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "acme_requests_total",
		Help: "HTTP requests to the ACME CA, by endpoint kind and status code (0: no response).",
	}, []string{"endpoint", "code"})
	m.acmeDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "acme_request_duration_seconds",
		Help:    "Duration of HTTP requests to the ACME CA, by endpoint kind.",
		Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
	}, []string{"endpoint"})
	m.challengeRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "challenge_requests_total",
		Help: "Requests to the HTTP-01 challenge server, by outcome (served, not_found, bad_request).",
	}, []string{"outcome"})
	m.selfChecks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "self_checks_total",
		Help: "Attempts to fetch a challenge through the ingress before asking the CA, by outcome (ok, fail).",
	}, []string{"outcome"})
}

// addProblemCollectors creates the collectors of problems the user must fix.
func (m *Metrics) addProblemCollectors() {
	m.problems = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "sync_problems_total",
		Help: "Certificates not ordered because of a problem the user must fix, by reason (InvalidAnnotation, InvalidHost, NoHosts, ConflictingOptions, SecretNotOwned, OrderLimit).",
	}, []string{"reason"})
	m.hostsWithoutTLS = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "hosts_without_tls",
		Help: "1 for each rule host of an opted-in Ingress that no spec.tls entry covers: it is served without TLS.",
	}, []string{"namespace", "ingress", "host"})
}

// buildInfo returns the build_info gauge, set to 1, labelled with version and
// the Go version.
func buildInfo(version string) prometheus.Gauge {
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help:        "Always 1; the labels tell the version and Go version.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	info.Set(1)
	return info
}

// Handler serves the metrics gathered from g in the Prometheus text format.
func Handler(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// SetCertificate records the certificate in namespace/secret: its expiry, when it
// is next due for renewal, and whether it is ready.
func (m *Metrics) SetCertificate(namespace, secret string, notAfter, renewAt time.Time, ready bool) {
	m.certs.set(namespace, secret, notAfter, renewAt, ready)
}

// SetHostsWithoutTLS records the rule hosts of namespace/ingress that no spec.tls
// entry covers, replacing what was recorded for it; none drops its series.
func (m *Metrics) SetHostsWithoutTLS(namespace, ingress string, hosts []string) {
	m.hostsWithoutTLS.DeletePartialMatch(prometheus.Labels{"namespace": namespace, "ingress": ingress})
	for _, h := range hosts {
		m.hostsWithoutTLS.WithLabelValues(namespace, ingress, h).Set(1)
	}
}

// DeleteCertificate drops the series of namespace/secret, for a certificate that
// no longer exists or is no longer wanted.
func (m *Metrics) DeleteCertificate(namespace, secret string) {
	m.certs.delete(namespace, secret)
}

// Issuance counts one completed order of kind ("issue" or "renew") with outcome
// ("success" or "failure") that took d.
func (m *Metrics) Issuance(kind, outcome string, d time.Duration) {
	m.issuances.WithLabelValues(kind, outcome).Inc()
	m.orderDuration.WithLabelValues(kind, outcome).Observe(d.Seconds())
}

// ACMERequest counts one HTTP request to the CA.
func (m *Metrics) ACMERequest(endpoint string, code int, took time.Duration) {
	m.acmeRequests.WithLabelValues(endpoint, strconv.Itoa(code)).Inc()
	m.acmeDuration.WithLabelValues(endpoint).Observe(took.Seconds())
}

// ChallengeRequest counts one request to the challenge server.
func (m *Metrics) ChallengeRequest(outcome string) {
	m.challengeRequests.WithLabelValues(outcome).Inc()
}

// Problem counts a certificate not ordered for reason, one of a fixed few.
func (m *Metrics) Problem(reason string) {
	m.problems.WithLabelValues(reason).Inc()
}

// SelfCheck counts one self-check attempt.
func (m *Metrics) SelfCheck(ok bool) {
	outcome := "fail"
	if ok {
		outcome = "ok"
	}
	m.selfChecks.WithLabelValues(outcome).Inc()
}
