package testbed

import (
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Ingress is the Ingress a user would write: each host's / (Prefix) to
// backend:80, no spec.tls, no ingress class; opted in to ingress-acme with the
// annotation kubernetes.io/tls-acme: "true" when acme is set.
func Ingress(ns, name, backend string, acme bool, hosts ...string) *networkingv1.Ingress {
	prefix := networkingv1.PathTypePrefix
	ing := &networkingv1.Ingress{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "Ingress"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: map[string]string{}},
	}
	if acme {
		ing.Annotations["kubernetes.io/tls-acme"] = "true"
	}
	for _, h := range hosts {
		ing.Spec.Rules = append(ing.Spec.Rules, networkingv1.IngressRule{
			Host: h,
			IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{
				Paths: []networkingv1.HTTPIngressPath{{
					Path: "/", PathType: &prefix,
					Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{
						Name: backend, Port: networkingv1.ServiceBackendPort{Number: 80},
					}},
				}},
			}},
		})
	}
	return ing
}
