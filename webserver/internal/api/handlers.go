package api

import (
	"context"
	"errors"
	"log/slog"
	"mime"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/purchase-system/purchase-system/servicekit/httpjson"
	"github.com/purchase-system/purchase-system/servicekit/purchase"
	"github.com/purchase-system/purchase-system/webserver/internal/customers"
)

// MaxBodyBytes bounds a /buy request body.
const MaxBodyBytes = 64 << 10

func handleBuy(pub Publisher, logger *slog.Logger, now func() time.Time) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if status, msg := checkJSONContentType(r); status != 0 {
			httpjson.Error(w, status, msg)
			return
		}
		req, err := purchase.DecodeRequest(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				httpjson.Error(w, http.StatusRequestEntityTooLarge, "request body larger than 64 KiB")
				return
			}
			httpjson.Error(w, http.StatusBadRequest, err.Error())
			return
		}
		p := purchase.New(req, now())
		if err := pub.Publish(r.Context(), p); err != nil {
			logger.Warn("purchase not accepted", "id", p.ID, "userid", p.UserID, "err", err)
			httpjson.Error(w, http.StatusServiceUnavailable, "purchase not accepted: "+err.Error())
			return
		}
		httpjson.Write(w, http.StatusCreated, p)
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
			logger.Warn("reading purchases failed", "userid", userID, "err", err)
			httpjson.Error(w, http.StatusBadGateway, err.Error())
			return
		case errors.As(err, &status):
			// The API's own 4xx (a bad limit, say) is the caller's to fix.
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status.Status)
			_, _ = w.Write(status.Body)
			return
		case err != nil:
			httpjson.Error(w, http.StatusBadGateway, err.Error())
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}
}

func handleHealthz() http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		httpjson.Write(w, http.StatusOK, map[string]string{"status": "ok"})
	}
}

func handleReadyz(pub Publisher) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := pub.Ready(ctx); err != nil {
			httpjson.Error(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		httpjson.Write(w, http.StatusOK, map[string]string{"status": "ready"})
	}
}
