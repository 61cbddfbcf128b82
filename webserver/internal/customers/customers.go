// Package customers reads a user's purchases from the Customer Management
// API.
package customers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/purchase-system/purchase-system/servicekit/purchase"
)

// ErrUnavailable means the Customer Management API could not answer.
var ErrUnavailable = errors.New("customer management API unavailable")

// Client talks to the Customer Management API at BaseURL.
type Client struct {
	baseURL string
	http    *http.Client
}

// New returns a client for baseURL (for example http://localhost:8081).
func New(baseURL string, timeout time.Duration) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("CUSTOMER_MANAGEMENT_URL %q is not an http(s) URL", baseURL)
	}
	return &Client{baseURL: strings.TrimRight(baseURL, "/"), http: &http.Client{Timeout: timeout}}, nil
}

// StatusError is an answer of the API other than 200, passed on to the
// caller as is when it is the client's fault (4xx).
type StatusError struct {
	Status int
	Body   []byte
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("customer management API answered %d: %s", e.Status, strings.TrimSpace(string(e.Body)))
}

// UserPurchases returns the JSON array of the user's purchases, newest
// first, as the API sent it. query is passed on (limit, after).
func (c *Client) UserPurchases(ctx context.Context, userID string, query url.Values) (json.RawMessage, error) {
	u := c.baseURL + "/purchases/" + url.PathEscape(userID)
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%w: reading response: %v", ErrUnavailable, err)
	}
	if resp.StatusCode != http.StatusOK {
		if resp.StatusCode >= 500 {
			return nil, fmt.Errorf("%w: %v", ErrUnavailable, &StatusError{resp.StatusCode, body})
		}
		return nil, &StatusError{resp.StatusCode, body}
	}
	if !json.Valid(body) {
		return nil, fmt.Errorf("%w: response is not JSON", ErrUnavailable)
	}
	return body, nil
}

// Claim asks which purchase an Idempotency-Key of p's user stands for,
// proposing p: the answer is p if the key is new, the purchase of the
// first request with the key otherwise. The Customer Management API
// decides once for every web server replica.
func (c *Client) Claim(ctx context.Context, key string, p purchase.Purchase) (purchase.Purchase, error) {
	b, err := json.Marshal(map[string]any{"key": key, "purchase": p})
	if err != nil {
		return p, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.baseURL+"/claims", bytes.NewReader(b))
	if err != nil {
		return p, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return p, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return p, fmt.Errorf("%w: reading response: %v", ErrUnavailable, err)
	}
	if resp.StatusCode != http.StatusOK {
		return p, fmt.Errorf("%w: %v", ErrUnavailable, &StatusError{resp.StatusCode, body})
	}
	var got purchase.Purchase
	if err := json.Unmarshal(body, &got); err != nil || got.ID == "" {
		return p, fmt.Errorf("%w: response is not a purchase: %s", ErrUnavailable, body)
	}
	return got, nil
}
