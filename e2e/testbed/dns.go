package testbed

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
)

// AddDNS makes pebble-challtestsrv answer host with the IPv4 address addr
// instead of 127.0.0.1 (a loopback address where nothing listens, say, makes
// the CA's validation of host fail).
func (tb *Testbed) AddDNS(ctx context.Context, host, addr string) error {
	body, _ := json.Marshal(map[string]any{"host": host, "addresses": []string{addr}})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tb.ChallTestSrvManagement+"/add-a", bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("testbed: add-a %s: %w", host, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("testbed: add-a %s: %s: %s", host, resp.Status, b)
	}
	return nil
}
