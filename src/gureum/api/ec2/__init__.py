"""The EC2 Query API over gureum's own services (docs/ec2.md): a protocol layer, no rules."""
