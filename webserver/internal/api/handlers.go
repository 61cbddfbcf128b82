package api

import (
	"errors"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/purchase-system/purchase-system/servicekit/httpjson"
	"github.com/purchase-system/purchase-system/servicekit/purchase"
	"github.com/purchase-system/purchase-system/webserver/internal/customers"
)

// MaxBodyBytes bounds a /buy request body.
const MaxBodyBytes = 64 << 10

// IdempotencyKeyHeader makes a retried POST /buy the same purchase.
const IdempotencyKeyHeader = "Idempotency-Key"

// handleBuy accepts a purchase. With an Idempotency-Key the key's purchase
// is decided once, by the Customer Management API that every replica
// shares (Claim), before anything is published: the first request's body
// wins; a retry with the same body gets that purchase (same id and
// timestamp, published again — the store keeps one row per id — and
// answered 200); another body under the key is 422, whether or not the
// purchase is stored yet. Without the claim store there is no decision:
// 503, retry. Without a key nothing of this happens.
func handleBuy(pub Publisher, cust Customers, logger *slog.Logger, now func() time.Time) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if status, msg := checkJSONContentType(r); status != 0 {
			httpjson.Error(w, status, msg)
			return
		}
		key, hasKey := r.Header[IdempotencyKeyHeader]
		if hasKey && (len(key) != 1 || purchase.ValidateIdempotencyKey(key[0]) != nil) {
			msg := "Idempotency-Key: give it once"
			if len(key) == 1 {
				msg = purchase.ValidateIdempotencyKey(key[0]).Error()
			}
			httpjson.Error(w, http.StatusBadRequest, msg)
			return
		}
		req, err := purchase.DecodeRequest(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
		if err != nil {
			answerBadBody(w, r, logger, err)
			return
		}
		p := purchase.New(req, now())
		status := http.StatusCreated
		if hasKey {
			p.ID = purchase.IDForKey(req.UserID, key[0])
			decided, err := cust.Claim(r.Context(), key[0], p)
			switch {
			case err != nil:
				httpjson.Fail(w, r, logger.With("id", p.ID, "userid", p.UserID), http.StatusServiceUnavailable,
					"purchase not accepted: the store of Idempotency-Keys is unavailable; retry with the same Idempotency-Key", err)
				return
			case decided.Username != req.Username || decided.Price != req.Price:
				httpjson.Error(w, http.StatusUnprocessableEntity, "Idempotency-Key was used for a different purchase of this user: use a new key for a new purchase")
				return
			case !decided.Timestamp.Equal(p.Timestamp):
				// An earlier request decided it: this is its retry.
				w.Header().Set("Idempotent-Replayed", "true")
				status = http.StatusOK
			}
			p = decided
		}
		if err := pub.Publish(r.Context(), p); err != nil {
			// Kafka's error names brokers: logged, not answered.
			httpjson.Fail(w, r, logger.With("id", p.ID, "userid", p.UserID), http.StatusServiceUnavailable,
				"purchase not accepted: Kafka did not take it in time; it may still be stored, retry with the same Idempotency-Key", err)
			return
		}
		httpjson.Write(w, status, p)
	}
}

// answerBadBody says what is wrong with a /buy body that did not decode:
// the client's JSON mistakes in full, a body too large or too slow by
// status; a failure to read it (a connection reset, say) without the
// connection's addresses.
func answerBadBody(w http.ResponseWriter, r *http.Request, logger *slog.Logger, err error) {
	var tooBig *http.MaxBytesError
	var field *purchase.FieldError
	var netErr net.Error
	switch {
	case errors.As(err, &tooBig):
		httpjson.Error(w, http.StatusRequestEntityTooLarge, "request body larger than 64 KiB")
	case errors.As(err, &field) || errors.Is(err, purchase.ErrMalformed):
		httpjson.Error(w, http.StatusBadRequest, err.Error())
	case errors.As(err, &netErr) && netErr.Timeout():
		httpjson.Error(w, http.StatusRequestTimeout, "request body not received in time")
	default:
		logger.Info("reading a request body failed", "request_id", httpjson.RequestIDOf(r.Context()), "err", err)
		httpjson.Error(w, http.StatusBadRequest, "request body could not be read")
	}
}

func checkJSONContentType(r *http.Request) (int, string) {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return http.StatusUnsupportedMediaType, "Content-Type must be application/json, got none"
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return http.StatusUnsupportedMediaType, "Content-Type must be application/json, got " + ct
	}
	return 0, ""
}

func handleGetAllUserBuys(c Customers, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		userID, err := purchase.UserIDFromPath(chi.URLParam(r, "userid"))
		if err != nil {
			httpjson.Error(w, http.StatusBadRequest, err.Error())
			return
		}
		body, err := c.UserPurchases(r.Context(), userID, r.URL.Query())
		var status *customers.StatusError
		switch {
		case errors.Is(err, customers.ErrUnavailable):
			httpjson.Fail(w, r, logger.With("userid", userID), http.StatusBadGateway, "the Customer Management API is unavailable", err)
			return
		case errors.As(err, &status):
			// The API's own 4xx (a bad limit, say) is the caller's to fix.
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status.Status)
			_, _ = w.Write(status.Body)
			return
		case err != nil:
			httpjson.Fail(w, r, logger.With("userid", userID), http.StatusBadGateway, "reading purchases failed", err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}
}
