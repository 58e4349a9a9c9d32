package fixspec

import (
	"fmt"

	"github.com/quickfixgo/quickfix"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// LogHooks lets an application watch what quickfixgo logs about a session: some outcomes (a failed
// dial, a message that could not be parsed) reach an application only this way.
type LogHooks struct {
	// Event sees every session event text.
	Event func(sessionID quickfix.SessionID, text string)
	// Incoming sees every raw inbound message; it runs on the session's goroutine and must be cheap.
	Incoming func(sessionID quickfix.SessionID, raw []byte)
}

// NewLogFactory adapts quickfixgo's logging to zap: session events at debug level (quickfixgo is
// chatty), raw messages only when debug is on, and hooks for the application.
func NewLogFactory(logger *zap.Logger, hooks LogHooks) quickfix.LogFactory {
	return &logFactory{logger: logger.Named("quickfix"), hooks: hooks}
}

type logFactory struct {
	logger *zap.Logger
	hooks  LogHooks
}

// Create returns the global log.
func (f *logFactory) Create() (quickfix.Log, error) {
	return &sessionLog{logger: f.logger, debug: f.logger.Core().Enabled(zapcore.DebugLevel)}, nil
}

// CreateSessionLog returns the log of one session.
func (f *logFactory) CreateSessionLog(id quickfix.SessionID) (quickfix.Log, error) {
	l := f.logger.With(zap.String("session", id.String()))
	return &sessionLog{logger: l, id: id, hooks: f.hooks, debug: l.Core().Enabled(zapcore.DebugLevel)}, nil
}

type sessionLog struct {
	logger *zap.Logger
	id     quickfix.SessionID
	hooks  LogHooks
	debug  bool
}

// OnIncoming logs an inbound message.
func (l *sessionLog) OnIncoming(raw []byte) {
	if l.hooks.Incoming != nil {
		l.hooks.Incoming(l.id, raw)
	}
	if l.debug {
		l.logger.Debug("fix in", zap.ByteString("message", raw))
	}
}

// OnOutgoing logs an outbound message.
func (l *sessionLog) OnOutgoing(raw []byte) {
	if l.debug {
		l.logger.Debug("fix out", zap.ByteString("message", raw))
	}
}

// OnEvent logs a session event.
func (l *sessionLog) OnEvent(text string) {
	if l.hooks.Event != nil {
		l.hooks.Event(l.id, text)
	}
	if l.debug {
		l.logger.Debug("fix event", zap.String("event", text))
	}
}

// OnEventf logs a formatted session event.
func (l *sessionLog) OnEventf(format string, args ...any) {
	l.OnEvent(fmt.Sprintf(format, args...))
}
