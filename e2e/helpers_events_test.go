package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Events the controller recorded, for tests to count and print.

// events lists the Events in ns about the object name, with reason (all when "").
func events(t *testing.T, ns, name, reason string) []corev1.Event {
	t.Helper()
	list, err := bed.Client().CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []corev1.Event
	for _, e := range list.Items {
		if e.InvolvedObject.Name == name && (reason == "" || e.Reason == reason) {
			out = append(out, e)
		}
	}
	return out
}

// eventCount is how many times the Events in ns about object name with reason
// occurred: the sum of their counts, since the recorder folds repeats of one
// message into one Event with a count.
func eventCount(t *testing.T, ns, name, reason string) int {
	t.Helper()
	return sumCounts(events(t, ns, name, reason))
}

// nsEvents lists the Events in ns with reason, about any object.
func nsEvents(t *testing.T, ns, reason string) []corev1.Event {
	t.Helper()
	list, err := bed.Client().CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []corev1.Event
	for _, e := range list.Items {
		if e.Reason == reason {
			out = append(out, e)
		}
	}
	return out
}

// sumCounts adds up the counts of evs (an Event without one counts once).
func sumCounts(evs []corev1.Event) int {
	n := 0
	for _, e := range evs {
		n += max(int(e.Count), 1)
	}
	return n
}

// eventsByReason lists every Event in ns about object name as
// "Type Reason xCount: message", for failure messages.
func eventsByReason(t *testing.T, ns, name string) string {
	t.Helper()
	var b strings.Builder
	for _, e := range events(t, ns, name, "") {
		fmt.Fprintf(&b, "  %s %s x%d: %s\n", e.Type, e.Reason, max(e.Count, 1), e.Message)
	}
	return b.String()
}
