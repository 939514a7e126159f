package socket

// Source is the connection's source address (without its port): the
// session keys its limits of failed authentications by it.
func (c *conn) Source() string { return c.src }

// Source is the connection's source address (without its port).
func (c *tlsConn) Source() string { return c.src }
