package core

// Labels on every object ingress-acme creates; Selector matches exactly them,
// and Owned decides from them whether an object is ours.
const (
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedBy      = "ingress-acme"
	Selector       = LabelManagedBy + "=" + ManagedBy
	// LabelRole tells our Secrets in the controller's namespace apart:
	// RoleAccount (an ACME account key), RoleState (a certificate's backoff).
	LabelRole   = AnnotationPrefix + "role"
	RoleAccount = "account"
	RoleState   = "state"
)

// Owned reports whether an object with these labels is ours: the one place
// that decides it. Nothing of ours ever changes an object that is not.
func Owned(labels map[string]string) bool { return labels[LabelManagedBy] == ManagedBy }

// AnnotationPrefix is the prefix of every annotation of ours.
const AnnotationPrefix = "ingress-acme.io/"

// AnnotationTLSACME opts an object in, with the value "true" (the convention
// kube-lego started).
const AnnotationTLSACME = "kubernetes.io/tls-acme"

// Annotations a user sets on an object that asks for a certificate.
const (
	// AnnotationKeyType chooses the private key type (see KeyTypes); on a
	// Secret of ours it records the type of the key it holds.
	AnnotationKeyType = AnnotationPrefix + "key-type"
	// AnnotationProfile asks the CA for a certificate profile it offers (e.g.
	// Let's Encrypt's "shortlived"); on a Secret of ours it records the
	// profile its certificate was ordered with ("" for the CA's default).
	AnnotationProfile = AnnotationPrefix + "profile"
	// AnnotationPathType chooses the pathType of HTTP-01 challenge paths in
	// an Ingress: Exact (default), Prefix or ImplementationSpecific.
	AnnotationPathType = AnnotationPrefix + "path-type"
)

// Annotations ingress-acme writes on the objects that ask for certificates.
const (
	// AnnotationManagedTLS records the spec.tls entry added to an Ingress that
	// had none (JSON: the Secret and the hosts written), so that the entry
	// keeps following the rule hosts until the user edits it.
	AnnotationManagedTLS = AnnotationPrefix + "managed-tls"
	// AnnotationChallenges journals the challenge paths inserted into an
	// Ingress and not removed yet, written in the same Update as the paths.
	AnnotationChallenges = AnnotationPrefix + "challenges"
)

// Annotations on the Secrets ingress-acme writes, besides AnnotationKeyType
// and AnnotationProfile.
const (
	AnnotationHosts    = AnnotationPrefix + "hosts"
	AnnotationNotAfter = AnnotationPrefix + "not-after"
	AnnotationSerial   = AnnotationPrefix + "serial"
	// AnnotationIssuer records the name of the issuer the certificate was
	// asked of (on an account key: none).
	AnnotationIssuer = AnnotationPrefix + "issuer"
	// AnnotationDirectory records the identity (an ACME directory URL) of the
	// issuer the certificate was asked of; on an account key Secret, the
	// directory the account is at.
	AnnotationDirectory = AnnotationPrefix + "directory"
	// AnnotationSignedBy records the identity of the CA that signed the
	// certificate: the issuer asked of, or the one it fell back to.
	AnnotationSignedBy = AnnotationPrefix + "signed-by"
	// AnnotationSecretKeys records the keys beyond tls.crt and tls.key that
	// the Secret was written with (see Options.SecretKeys), so that a change
	// of the keys asked for is seen from the cache.
	AnnotationSecretKeys = AnnotationPrefix + "secret-keys"
	// AnnotationStateOf names the certificate a state Secret keeps the record of.
	AnnotationStateOf = AnnotationPrefix + "state-of"
)
