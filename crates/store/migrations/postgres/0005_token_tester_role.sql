-- The tester role an admin grants an ordinary token (`expert`, `product_lead`,
-- `tech_lead`, `team` or `external`): a review submitted with the token
-- counts with that role's weight. NULL: the token may not vote (review links
-- carry their role in `scope`).
ALTER TABLE api_tokens ADD COLUMN tester_role TEXT;
