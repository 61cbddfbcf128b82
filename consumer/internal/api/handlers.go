package api

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/purchase-system/purchase-system/consumer/internal/store"
	"github.com/purchase-system/purchase-system/servicekit/httpjson"
	"github.com/purchase-system/purchase-system/servicekit/purchase"
)

// Limits of one response.
const (
	DefaultLimit = 1000
	MaxLimit     = 10000
)

func parseLimit(q url.Values) (int, error) {
	v := q.Get("limit")
	if v == "" {
		return DefaultLimit, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > MaxLimit {
		return 0, fmt.Errorf("limit: must be an integer from 1 to %d, got %q", MaxLimit, v)
	}
	return n, nil
}

// handleUserPurchases answers a JSON array of the user's purchases, newest
// first, at most limit of them.
func handleUserPurchases(s Store, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		userID, err := purchase.UserIDFromPath(chi.URLParam(r, "userid"))
		if err != nil {
			httpjson.Error(w, http.StatusBadRequest, err.Error())
			return
		}
		limit, err := parseLimit(r.URL.Query())
		if err != nil {
			httpjson.Error(w, http.StatusBadRequest, err.Error())
			return
		}
		ps, err := s.UserPurchases(r.Context(), userID, limit)
		if err != nil {
			// The database's error names its host and user: logged only.
			httpjson.Fail(w, r, logger.With("userid", userID), http.StatusServiceUnavailable, "the purchase store is unavailable", err)
			return
		}
		httpjson.Write(w, http.StatusOK, ps)
	}
}

// handlePurchase answers one purchase of a user by id, or 404: how the web
// server recognises a retried POST /buy (same Idempotency-Key, same id).
func handlePurchase(s Store, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		userID, err := purchase.UserIDFromPath(chi.URLParam(r, "userid"))
		if err != nil {
			httpjson.Error(w, http.StatusBadRequest, err.Error())
			return
		}
		id := chi.URLParam(r, "id")
		if err := purchase.ValidateID(id); err != nil {
			httpjson.Error(w, http.StatusBadRequest, err.Error())
			return
		}
		p, found, err := s.Purchase(r.Context(), userID, id)
		switch {
		case err != nil:
			httpjson.Fail(w, r, logger.With("userid", userID), http.StatusServiceUnavailable, "the purchase store is unavailable", err)
		case !found:
			httpjson.Error(w, http.StatusNotFound, "no purchase "+id+" of user "+userID)
		default:
			httpjson.Write(w, http.StatusOK, p)
		}
	}
}

// Page is one page of the purchase log, oldest first. Next is empty on the
// last page.
type Page struct {
	Purchases []purchase.Purchase `json:"purchases"`
	Next      string              `json:"next,omitempty"`
}

func handlePage(s Store, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		limit, err := parseLimit(q)
		if err != nil {
			httpjson.Error(w, http.StatusBadRequest, err.Error())
			return
		}
		after, err := store.ParseCursor(q.Get("after"))
		if err != nil {
			httpjson.Error(w, http.StatusBadRequest, err.Error())
			return
		}
		ps, next, err := s.Page(r.Context(), after, limit)
		if err != nil {
			httpjson.Fail(w, r, logger, http.StatusServiceUnavailable, "the purchase store is unavailable", err)
			return
		}
		httpjson.Write(w, http.StatusOK, Page{Purchases: ps, Next: next.String()})
	}
}

// ClaimRequest asks which purchase an Idempotency-Key stands for,
// proposing one (the web server's, for its first request with the key).
type ClaimRequest struct {
	Key      string            `json:"key"`
	Purchase purchase.Purchase `json:"purchase"`
}

// handleClaim answers the key's purchase: the proposed one if the key is
// new, the first claim's otherwise. The web servers share this decision
// (POST /buy with an Idempotency-Key), whether or not the purchase is
// stored yet.
func handleClaim(s Store, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req ClaimRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			httpjson.Error(w, http.StatusBadRequest, "claim: "+err.Error())
			return
		}
		if err := purchase.ValidateIdempotencyKey(req.Key); err != nil {
			httpjson.Error(w, http.StatusBadRequest, err.Error())
			return
		}
		if err := req.Purchase.Validate(); err != nil {
			httpjson.Error(w, http.StatusBadRequest, "claim: "+err.Error())
			return
		}
		p, err := s.Claim(r.Context(), req.Key, req.Purchase)
		if err != nil {
			httpjson.Fail(w, r, logger.With("userid", req.Purchase.UserID), http.StatusServiceUnavailable, "the purchase store is unavailable", err)
			return
		}
		httpjson.Write(w, http.StatusOK, p)
	}
}
