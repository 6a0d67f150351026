package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
)

// The Grafana dashboard in deploy/grafana-dashboard.json.

// dashboardExpr is one query of the Grafana dashboard.
type dashboardExpr struct{ title, expr string }

type dashboardPanel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos *struct{ X, Y, W, H int } `json:"gridPos"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
}

type dashboard struct {
	Title         string           `json:"title"`
	UID           string           `json:"uid"`
	SchemaVersion int              `json:"schemaVersion"`
	Panels        []dashboardPanel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(deployPath(t, "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		t.Fatalf("grafana-dashboard.json: trailing data after the dashboard")
	}
	return d
}

func dashboardExprs(t *testing.T) []dashboardExpr {
	t.Helper()
	var out []dashboardExpr
	for _, p := range loadDashboard(t).Panels {
		for _, tg := range p.Targets {
			out = append(out, dashboardExpr{p.Title, tg.Expr})
		}
	}
	return out
}

// deploy/grafana-dashboard.json is a Grafana dashboard with a Prometheus data
// source variable and the panels an operator needs, querying metrics that exist.
func TestMetricsDashboard(t *testing.T) {
	t.Parallel()
	d := loadDashboard(t)
	if d.SchemaVersion < 36 || d.SchemaVersion > 41 {
		t.Errorf("schemaVersion: got %d, want about 39", d.SchemaVersion)
	}
	if d.Title == "" || d.UID == "" {
		t.Errorf("title %q, uid %q: want both", d.Title, d.UID)
	}
	dsVar := false
	for _, v := range d.Templating.List {
		if v.Type == "datasource" && v.Query == "prometheus" {
			dsVar = v.Name == "datasource"
		}
	}
	if !dsVar {
		t.Error("no datasource variable named datasource of type prometheus")
	}
	known := metricNames(t)
	known["up"] = true
	ids := map[int]bool{}
	titles := map[string]bool{}
	for _, p := range d.Panels {
		titles[p.Title] = true
		if ids[p.ID] {
			t.Errorf("panel %q: id %d used twice", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.Datasource.UID != "${datasource}" || p.Datasource.Type != "prometheus" {
			t.Errorf("panel %q: datasource %+v, want the variable ${datasource}", p.Title, p.Datasource)
		}
		if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.H == 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v", p.Title, p.GridPos)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q: no query", p.Title)
		}
		for _, tg := range p.Targets {
			if u := unknownNames(tg.Expr, known); len(u) > 0 {
				t.Errorf("panel %q: no such metric %v in %s", p.Title, u, tg.Expr)
			}
			if strings.Count(tg.Expr, "(") != strings.Count(tg.Expr, ")") {
				t.Errorf("panel %q: unbalanced parentheses in %s", p.Title, tg.Expr)
			}
		}
	}
	for _, want := range []string{"Certificate expiry (days left)", "Issuance outcomes", "ACME request latency", "Work queue depth"} {
		if !titles[want] {
			t.Errorf("no panel %q", want)
		}
	}
	var latency []string
	for _, e := range dashboardExprs(t) {
		if e.title == "ACME request latency" {
			latency = append(latency, e.expr)
		}
	}
	if len(latency) != 2 || !strings.Contains(latency[0], "histogram_quantile(0.5,") || !strings.Contains(latency[1], "histogram_quantile(0.95,") ||
		!strings.Contains(latency[1], "by (le, endpoint)") {
		t.Errorf("ACME request latency: got %q, want p50 and p95 by endpoint", latency)
	}
}
