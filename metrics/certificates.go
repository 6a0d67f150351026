package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// certificates is the collector of the per-certificate gauges, labelled by the
// Secret's namespace and name. It keeps three numbers per certificate and makes
// the samples at scrape time: at 10,000 certificates, three GaugeVecs' series
// (a gauge, its label pairs and map entries each) cost about 15 MB; this about
// 1 MB.
type certificates struct {
	expiry, renewal, ready *prometheus.Desc

	mu    sync.Mutex // guards certs
	certs map[certID]certValues
}

type certID struct{ namespace, secret string }

type certValues struct {
	notAfter, renewAt int64 // Unix seconds
	ready             bool
}

func newCertificates() *certificates {
	labels := []string{"namespace", "secret"}
	name := func(n string) string { return prometheus.BuildFQName(namespace, "", n) }
	return &certificates{
		expiry: prometheus.NewDesc(name("certificate_expiry_timestamp_seconds"),
			"When the certificate in the Secret expires (not-after), as a Unix time. Only for certificates that exist.", labels, nil),
		renewal: prometheus.NewDesc(name("certificate_renewal_timestamp_seconds"),
			"When the certificate is next due for renewal, as a Unix time. Only for certificates that exist.", labels, nil),
		ready: prometheus.NewDesc(name("certificate_ready"),
			"1 when the Secret holds a valid certificate for every host its Ingresses ask for, else 0. Only for certificates that exist.", labels, nil),
		certs: map[certID]certValues{},
	}
}

func (c *certificates) set(namespace, secret string, notAfter, renewAt time.Time, ready bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.certs[certID{namespace, secret}] = certValues{notAfter: notAfter.Unix(), renewAt: renewAt.Unix(), ready: ready}
}

func (c *certificates) delete(namespace, secret string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.certs, certID{namespace, secret})
}

// Describe implements prometheus.Collector.
func (c *certificates) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.expiry
	ch <- c.renewal
	ch <- c.ready
}

// Collect implements prometheus.Collector. It copies the values first, so that
// a slow scrape never holds up the controller.
func (c *certificates) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	ids := make([]certID, 0, len(c.certs))
	vals := make([]certValues, 0, len(c.certs))
	for id, v := range c.certs {
		ids, vals = append(ids, id), append(vals, v)
	}
	c.mu.Unlock()
	for i, id := range ids {
		v := vals[i]
		ready := 0.0
		if v.ready {
			ready = 1
		}
		ch <- &certSample{c.expiry, id, float64(v.notAfter)}
		ch <- &certSample{c.renewal, id, float64(v.renewAt)}
		ch <- &certSample{c.ready, id, ready}
	}
}

// The label names of certSample, addressable for dto.LabelPair.
var labelNamespace, labelSecret = "namespace", "secret"

// certSample is one gauge sample of a certificate: what
// prometheus.MustNewConstMetric makes, without its checks and its copies of
// the label values (Write points at the certificate's own strings). At 10,000
// certificates a scrape makes 30,000 of these.
type certSample struct {
	desc  *prometheus.Desc
	id    certID
	value float64
}

// Desc implements prometheus.Metric.
func (m *certSample) Desc() *prometheus.Desc { return m.desc }

// Write implements prometheus.Metric. The labels are in the order of the
// Desc's, which is sorted.
func (m *certSample) Write(out *dto.Metric) error {
	out.Label = []*dto.LabelPair{{Name: &labelNamespace, Value: &m.id.namespace}, {Name: &labelSecret, Value: &m.id.secret}}
	out.Gauge = &dto.Gauge{Value: &m.value}
	return nil
}
