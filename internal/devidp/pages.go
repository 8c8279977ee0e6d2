package devidp

import (
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strings"

	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/bastion-ssh/bastion/internal/usertext"
)

// pages renders the login and device approval pages.
type pages struct{ t *template.Template }

const pageHTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bastion dev IdP</title>
<meta name="viewport" content="width=device-width">
<style>body{font-family:system-ui,sans-serif;max-width:28em;margin:3em auto;padding:0 1em}
label{display:block;margin:.8em 0}input{display:block;width:100%;padding:.3em}
button{margin:.8em .5em 0 0;padding:.4em 1.2em}.error{color:#b00020}</style></head>
<body><h1>bastion dev IdP</h1>
{{with .Message}}<p class="{{if $.Error}}error{{end}}">{{.}}</p>{{end}}
{{if .Form}}<form method="post" action="{{.Action}}">
{{if .Device}}<p>A terminal is asking to log in as you. Approve only if the code below is the one it shows.</p>
<label>Code <input name="user_code" value="{{.UserCode}}" autocomplete="off" spellcheck="false"></label>
{{else}}<input type="hidden" name="authRequestID" value="{{.AuthRequestID}}">
<p>Log in to continue to bastion.</p>{{end}}
<label>Username <input name="username" value="{{.Username}}" autocomplete="username"></label>
<label>Password <input name="password" type="password" autocomplete="current-password"></label>
<button name="action" value="approve">Approve</button>
<button name="action" value="deny">Deny</button>
</form>{{end}}
</body></html>
`

type pageData struct {
	Message, Action, UserCode, AuthRequestID, Username string
	Error, Form, Device                                bool
	// formTarget is an origin the form's submission may end at besides
	// this provider: the client's redirect URI, which the login's POST
	// redirects to. CSP form-action governs every redirect after a form
	// submission, so without it a browser blocks the return to the
	// loopback callback (another port is another origin).
	formTarget string
}

func newPages() (*pages, error) {
	t, err := template.New("page").Parse(pageHTML)
	if err != nil {
		return nil, fmt.Errorf("devidp: page template: %w", err)
	}
	return &pages{t: t}, nil
}

func (p *pages) render(w http.ResponseWriter, status int, d pageData) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	// The approval page grants access: never framed (clickjacking), and
	// forms post only back here.
	formAction := "'self'"
	if d.formTarget != "" {
		formAction += " " + d.formTarget
	}
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action "+formAction+"; frame-ancestors 'none'")
	h.Set("X-Frame-Options", "DENY")
	w.WriteHeader(status)
	_ = p.t.Execute(w, d)
}

// handleDevice is the verification URI of the device flow.
func (s *Server) handleDevice(w http.ResponseWriter, r *http.Request) {
	d := pageData{Action: devicePath, Form: true, Device: true}
	switch r.Method {
	case http.MethodGet:
		d.UserCode = r.URL.Query().Get("user_code")
		s.pages.render(w, http.StatusOK, d)
	case http.MethodPost:
		r.Body = http.MaxBytesReader(w, r.Body, 1<<16)
		if err := r.ParseForm(); err != nil {
			s.pages.render(w, http.StatusBadRequest, pageData{Message: "The form could not be read.", Error: true})
			return
		}
		d.UserCode, d.Username = r.PostForm.Get("user_code"), r.PostForm.Get("username")
		approve := r.PostForm.Get("action") != "deny"
		u, err := s.store.decideDevice(d.UserCode, approve, d.Username, r.PostForm.Get("password"))
		switch {
		case err != nil:
			d.Message, d.Error = usertext.Error(err), true
			s.pages.render(w, statusOf(err), d)
		case approve:
			// The IdP only vouches for who the user is: the gateway then
			// decides (a lock, a revocation or its signing policy may
			// still refuse), and only the terminal hears its answer.
			s.pages.render(w, http.StatusOK, pageData{Message: ApprovedMessage(u.Username)})
		default:
			s.pages.render(w, http.StatusOK, pageData{Message: "Denied: the terminal's login was refused. You can close this page."})
		}
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

// ApprovedMessage is what the device page says once the user approved:
// that the identity provider approved, not that the login succeeded,
// which bastion decides afterwards and reports in the terminal.
func ApprovedMessage(username string) string {
	return "Approved at the identity provider as " + username + ". bastion now checks the login and signs your certificate, or says why not: the result is shown in the terminal. You can close this page."
}

// handleLogin is the login page op redirects the authorization code flow to.
func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request) {
	d := pageData{Action: loginPath, Form: true}
	switch r.Method {
	case http.MethodGet:
		d.AuthRequestID = r.URL.Query().Get("authRequestID")
		req, err := s.store.AuthRequestByID(r.Context(), d.AuthRequestID)
		if err != nil {
			s.pages.render(w, http.StatusNotFound, pageData{Message: usertext.Error(err), Error: true})
			return
		}
		d.formTarget = origin(req.GetRedirectURI())
		s.pages.render(w, http.StatusOK, d)
	case http.MethodPost:
		r.Body = http.MaxBytesReader(w, r.Body, 1<<16)
		if err := r.ParseForm(); err != nil {
			s.pages.render(w, http.StatusBadRequest, pageData{Message: "The form could not be read.", Error: true})
			return
		}
		d.AuthRequestID, d.Username = r.PostForm.Get("authRequestID"), r.PostForm.Get("username")
		if r.PostForm.Get("action") == "deny" {
			req, err := s.store.AuthRequestByID(r.Context(), d.AuthRequestID)
			if err != nil {
				s.pages.render(w, http.StatusNotFound, pageData{Message: usertext.Error(err), Error: true})
				return
			}
			if s.silentDeny {
				// Some IdPs end a denial here; the client never hears of it.
				s.pages.render(w, http.StatusOK, pageData{Message: "You denied the login. You can close this page."})
				return
			}
			// op redirects to the client with error=access_denied.
			op.AuthRequestError(w, r, req, oidc.ErrAccessDenied().WithDescription("the user denied the login"), s.op)
			return
		}
		if err := s.store.completeAuthRequest(d.AuthRequestID, d.Username, r.PostForm.Get("password")); err != nil {
			d.Message, d.Error = usertext.Error(err), true
			s.pages.render(w, statusOf(err), d)
			return
		}
		http.Redirect(w, r, s.callbackURL(r.Context(), d.AuthRequestID), http.StatusFound)
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

// origin returns the CSP source for a redirect URI's origin
// (scheme://host:port), or "" when it has none. op has already checked
// the URI against the client's registered ones.
func origin(redirectURI string) string {
	u, err := url.Parse(redirectURI)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || strings.ContainsAny(u.Host, " ;,'\"") {
		return ""
	}
	return u.Scheme + "://" + u.Host
}

func statusOf(err error) int {
	switch {
	case errors.Is(err, errBadCredentials):
		return http.StatusUnauthorized
	case errors.Is(err, errUnknownCode), errors.Is(err, errUnknownRequest):
		return http.StatusNotFound
	case errors.Is(err, errCodeExpired), errors.Is(err, errCodeDecided):
		return http.StatusGone
	}
	return http.StatusBadRequest
}
