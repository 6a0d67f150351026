package acme

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	_ "crypto/sha256" // the hashes of ES256, RS256
	_ "crypto/sha512" // and of ES384, ES512
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"strings"
)

// respond tells the CA to validate the challenge at url (RFC 8555, section
// 7.5.1): one POST of "{}" signed with the account key of l, through hc, and
// no waiting. A badNonce answer is retried with the nonce it carries, at most
// three times. A CA's refusal is returned as a problem.
func respond(hc *http.Client, l lib, url string) error {
	nonce, err := newNonce(hc, l.nonceURL())
	if err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		next, err := postOnce(hc, l, url, nonce)
		if err == nil || next == "" || attempt == 3 || !isProblem(err, "badNonce") {
			return err
		}
		nonce = next
	}
}

// postOnce sends the signed POST and returns the CA's next nonce with its error.
func postOnce(hc *http.Client, l lib, url, nonce string) (string, error) {
	body, err := signJWS(l.accountKey(), l.accountURL(), nonce, url, []byte("{}"))
	if err != nil {
		return "", err
	}
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/jose+json")
	resp, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("acme: respond to challenge: %w", err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode == http.StatusOK {
		return "", nil
	}
	var p problem
	if json.Unmarshal(data, &p) != nil || p.Type == "" {
		return "", fmt.Errorf("acme: respond to challenge %s: %s", url, resp.Status)
	}
	return resp.Header.Get("Replay-Nonce"), p
}

func newNonce(hc *http.Client, url string) (string, error) {
	if url == "" {
		return "", errors.New("acme: the directory has no newNonce")
	}
	req, err := http.NewRequest(http.MethodHead, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("acme: new nonce: %w", err)
	}
	resp.Body.Close()
	if n := resp.Header.Get("Replay-Nonce"); n != "" {
		return n, nil
	}
	return "", fmt.Errorf("acme: new nonce: %s without Replay-Nonce", resp.Status)
}

// signJWS returns the flattened JWS (RFC 7515) of payload for url, with the
// account URL kid and nonce in its protected header.
func signJWS(key crypto.Signer, kid, nonce, url string, payload []byte) ([]byte, error) {
	alg, hash := jwsAlg(key.Public())
	if alg == "" {
		return nil, fmt.Errorf("acme: unsupported account key %T", key.Public())
	}
	protected, err := json.Marshal(struct {
		Alg   string `json:"alg"`
		KID   string `json:"kid"`
		Nonce string `json:"nonce"`
		URL   string `json:"url"`
	}{alg, kid, nonce, url})
	if err != nil {
		return nil, err
	}
	b64 := base64.RawURLEncoding.EncodeToString
	input := b64(protected) + "." + b64(payload)
	h := hash.New()
	h.Write([]byte(input))
	sig, err := key.Sign(rand.Reader, h.Sum(nil), hash)
	if err != nil {
		return nil, fmt.Errorf("acme: sign: %w", err)
	}
	if pub, ok := key.Public().(*ecdsa.PublicKey); ok {
		if sig, err = rawECDSA(sig, pub.Curve); err != nil {
			return nil, err
		}
	}
	parts := strings.SplitN(input, ".", 2)
	return json.Marshal(map[string]string{"protected": parts[0], "payload": parts[1], "signature": b64(sig)})
}

func jwsAlg(pub crypto.PublicKey) (string, crypto.Hash) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return "RS256", crypto.SHA256
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return "ES256", crypto.SHA256
		case elliptic.P384():
			return "ES384", crypto.SHA384
		case elliptic.P521():
			return "ES512", crypto.SHA512
		}
	}
	return "", 0
}

// rawECDSA turns an ASN.1 ECDSA signature into the fixed-size r||s of JWS.
func rawECDSA(der []byte, curve elliptic.Curve) ([]byte, error) {
	var rs struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(der, &rs); err != nil {
		return nil, fmt.Errorf("acme: sign: %w", err)
	}
	size := (curve.Params().BitSize + 7) / 8
	out := make([]byte, 2*size)
	rs.R.FillBytes(out[:size])
	rs.S.FillBytes(out[size:])
	return out, nil
}
