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

// handleBuy accepts a purchase. With an Idempotency-Key the purchase's id
// derives from the user and the key, so a retry (after a timeout or a 503,
// when the first attempt may still have been stored) is the same purchase:
// if it is already stored, the stored one is answered (200); if not, it is
// published again under the same id and the store keeps it once.
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
		if hasKey {
			p.ID = purchase.IDForKey(req.UserID, key[0])
			stored, found, err := cust.Purchase(r.Context(), req.UserID, p.ID)
			switch {
			case err != nil:
				// Publishing again is safe: the store keeps one row per id.
				logger.Warn("looking up a retried purchase failed; publishing it again", "id", p.ID, "err", err)
			case found && (stored.Username != req.Username || stored.Price != req.Price):
				httpjson.Error(w, http.StatusUnprocessableEntity, "Idempotency-Key was used for a different purchase of this user: use a new key for a new purchase")
				return
			case found:
				w.Header().Set("Idempotent-Replayed", "true")
				httpjson.Write(w, http.StatusOK, stored)
				return
			}
		}
		if err := pub.Publish(r.Context(), p); err != nil {
			// Kafka's error names brokers: logged, not answered.
			httpjson.Fail(w, r, logger.With("id", p.ID, "userid", p.UserID), http.StatusServiceUnavailable,
				"purchase not accepted: Kafka did not take it in time; it may still be stored, retry with the same Idempotency-Key", err)
			return
		}
		httpjson.Write(w, http.StatusCreated, p)
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
