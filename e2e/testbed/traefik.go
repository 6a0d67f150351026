package testbed

import (
	"bytes"
	"text/template"
)

// traefikOptions fills traefikStatic: the static configuration of the
// testbed's own Traefik (Components) and of the data planes' (DataPlane).
type traefikOptions struct {
	Web, WebSecure, Ping string // entrypoint addresses (host:port)
	// API serves Traefik's API (without its dashboard) on the ping entrypoint.
	API bool

	// The Kubernetes API, for the providers.
	APIServer, Token, CAFile string
	// IngressClass limits the kubernetesIngress provider to one IngressClass
	// ("": every Ingress of no class or Traefik's).
	IngressClass string
	// NGINXClass, when set, adds the kubernetesIngressNGINX provider for that
	// IngressClass, whose spec.controller is NGINXController.
	NGINXClass, NGINXController string
	// DynamicFile, when set, adds the file provider reading it (traefikDynamic).
	DynamicFile string
}

// traefikStatic is Traefik's static configuration: loopback entrypoints, TLS
// on every router of websecure (else spec.tls only loads certificates), no
// throttling so Ingress changes are live in milliseconds.
var traefikStatic = template.Must(template.New("traefik.yml").Parse(`global:
  checkNewVersion: false
  sendAnonymousUsage: false
log:
  level: INFO
  noColor: true
entryPoints:
  web:
    address: {{printf "%q" .Web}}
  websecure:
    address: {{printf "%q" .WebSecure}}
    http:
      tls: {}
  traefik:
    address: {{printf "%q" .Ping}}
ping:
  entryPoint: traefik
{{- if .API}}
api:
  insecure: true
  dashboard: false # the web UI assets are not in the module
{{- end}}
providers:
  providersThrottleDuration: 0s
  kubernetesIngress:
    endpoint: {{printf "%q" .APIServer}}
    token: {{printf "%q" .Token}}
    certAuthFilePath: {{printf "%q" .CAFile}}
    throttleDuration: 0s
{{- with .IngressClass}}
    ingressClass: {{printf "%q" .}}
{{- end}}
{{- if .NGINXClass}}
  kubernetesIngressNGINX:
    endpoint: {{printf "%q" .APIServer}}
    token: {{printf "%q" .Token}}
    certAuthFilePath: {{printf "%q" .CAFile}}
    throttleDuration: 0s
    ingressClass: {{printf "%q" .NGINXClass}}
    controllerClass: {{printf "%q" .NGINXController}}
{{- end}}
{{- with .DynamicFile}}
  file:
    filename: {{printf "%q" .}}
{{- end}}
`))

// traefikDynamic is the dynamic configuration of the file provider: the
// middleware redirect-to-https@file, an HTTP to HTTPS redirect for Ingresses
// to name.
const traefikDynamic = `http:
  middlewares:
    redirect-to-https:
      redirectScheme:
        scheme: https
        permanent: true
`

// yaml renders traefikStatic for c.
func (c traefikOptions) yaml() ([]byte, error) {
	var b bytes.Buffer
	if err := traefikStatic.Execute(&b, c); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
